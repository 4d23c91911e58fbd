"""`assistant serve`: one local daemon that holds the model, OpenAI-compatible, open only to its user.

`schemas` holds the request bodies (validated at the edge), `scheduler` runs generations one at
a time from a bounded priority queue, `app` is the Starlette application (routes, the loopback
and token guard, metrics), and `daemon` binds the socket, writes the token file and runs uvicorn.
"""
