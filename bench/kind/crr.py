"""New TCP connections per second, as `cargo xtask bench` counts them:
connect, read a 1-byte answer, close (the client closes first).

    python3 crr.py server PORT
    python3 crr.py client HOST PORT SECONDS
"""
import socket
import sys
import time


def server(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)
    while True:
        c, _ = s.accept()
        c.sendall(b"x")
        c.close()


def client(host, port, secs):
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        c = socket.create_connection((host, port), timeout=2)
        if c.recv(1) != b"x":
            raise SystemExit("bad answer")
        c.close()
        n += 1
    print(f"connections/s {n / secs:.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
