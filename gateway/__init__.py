"""``maas serve``: the HTTP front door of the fleet (Open Inference Protocol, Prometheus metrics, the fleet page).

A process of its own, like a worker or beat: it imports ``app`` and nothing else of the fleet.
"""
