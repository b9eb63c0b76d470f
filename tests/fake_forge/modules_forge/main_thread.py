"""modules_forge/main_thread.py (Forge): work is queued to one long-lived thread; the original swallows the
task's exception (prints it) and returns None."""
import queue
import threading
import traceback

calls = []
_tasks = queue.Queue()


def _loop():
    while True:
        func, args, kwargs, box, done = _tasks.get()
        try:
            box["result"] = func(*args, **kwargs)
        except Exception as e:
            traceback.print_exc()
            print(e)
        finally:
            done.set()


threading.Thread(target=_loop, name="forge-main-thread", daemon=True).start()


def run_and_wait_result(func, *args, **kwargs):
    calls.append(getattr(func, "__name__", str(func)))
    box, done = {}, threading.Event()
    _tasks.put((func, args, kwargs, box, done))
    done.wait()
    return box.get("result")
