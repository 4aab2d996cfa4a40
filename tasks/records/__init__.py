"""The ground floor: records that cross process boundaries, on the wire and in Redis.

The job request (`request`), a job's status, ending and fan-out record (`jobs`). Pure
dataclasses with JSON round trips; they import nothing of the service but its errors,
so every floor (clients, the API, workers) may use them.
"""
