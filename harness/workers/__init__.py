"""The workers: a long-lived process per (backend, device, environment), and the pool that owns them.

- `pool`: in the pytest process (as pytest-xdist's `workermanage` is): starts each worker under
  its environment's interpreter, queues jobs, watches deadlines, restarts after a crash.
- `__main__` (`python -m harness.workers`): the worker process; imports keras and its backend
  once, then serves requests (`runner` runs one case in one cell; the arbiter's, the
  localization's and the cross-cell file loads are served from their packages).
- `compile_cache`, `memory`, `library_warnings`: what a worker records beside the checks (cached
  compiles, memory peaks, what the library warned).
"""
