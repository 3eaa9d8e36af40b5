"""What the throwaway servers on loopback share: a free port to listen on, and a stop that waits."""

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM (the server's own clean shutdown), then SIGKILL if it is still there after ``timeout`` seconds."""
    if server is None or server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
