"""What the demo, the tests and the benchmarks need around the fleet, and a deployment does not.

Throwaway Redis and PostgreSQL servers on free local ports (:mod:`harness.servers`), fleet processes started
and stopped by id (:mod:`harness.fleet`), and the demo (:mod:`harness.demo`). Not part of the installed
package: it runs from a checkout of the repository.
"""
