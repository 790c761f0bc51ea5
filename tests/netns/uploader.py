"""HTTP uploads through a VIP, run inside a client namespace: for each
VIP,SOURCE argument, one connection from SOURCE that POSTs `size` bytes in
full-sized segments and reads the answer (each bounded by a socket timeout).
Prints one JSON list: vip, source, status line, body, error."""
import json
import socket
import sys


def upload(vip: str, source: str, size: int) -> dict:
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    result = {"vip": vip, "source": source, "status": None, "body": None, "error": None}
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(8)
            s.bind((source, 0))
            s.connect((vip, 80))
            host = f"[{vip}]" if family == socket.AF_INET6 else vip
            s.sendall(f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n"
                      f"Connection: close\r\n\r\n".encode() + b"x" * size)
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            result["status"] = head.split(b"\r\n", 1)[0].decode(errors="replace")
            result["body"] = body.decode(errors="replace").strip()
    except OSError as err:
        result["error"] = f"{type(err).__name__}: {err}"
    return result


def main() -> None:
    size = int(sys.argv[1])
    print(json.dumps([upload(*target.split(","), size) for target in sys.argv[2:]]))


if __name__ == "__main__":
    main()
