import threading

# modules/call_queue.py: wrap_gradio_gpu_call runs every generation under this lock
queue_lock = threading.Lock()
