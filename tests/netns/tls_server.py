"""An HTTPS server for a lab backend (tests/netns/test_health_check_types.py):
a fresh self-signed certificate, every address on PORT, and /healthz answered
200 only when the TLS server name (SNI) and the Host header are both NAME,
421 (misdirected) otherwise, so a check that sends neither is told apart.
Prints "listening" once ready; runs until killed."""
import datetime
import http.server
import os
import socket
import ssl
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def context(name: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False).sign(key, hashes.SHA256()))
    directory = tempfile.mkdtemp()
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    return tls


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    tls = context(name)
    seen = {}
    tls.sni_callback = lambda sock, server_name, _ctx: seen.__setitem__(id(sock), server_name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            sni = seen.pop(id(self.connection), None)
            ok = self.path == "/healthz" and sni == name and self.headers.get("Host") == name
            self.send_response(200 if ok else 421)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # and IPv4
            super().server_bind()

        def get_request(self):
            sock, address = super().get_request()
            return tls.wrap_socket(sock, server_side=True), address

    server = Server(("::", port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
