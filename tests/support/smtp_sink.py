"""A real SMTP server for spade's mail> tests: aiosmtpd (from PyPI) on loopback. It
accepts AUTH PLAIN and LOGIN for one user without TLS (a loopback test has no certificate)
and writes each message it receives to OUT_DIR as JSON: the envelope (MAIL FROM, RCPT TO,
the authenticated user) and the message as Python's email package reads it (headers,
text body, attachments).

Usage: smtp_sink.py PORT OUT_DIR USER PASSWORD   (prints "ready" once it listens)
"""
import base64
import email
import email.policy
import itertools
import json
import os
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, out_dir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
counter = itertools.count()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain", "html"))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_user": session.auth_data.login.decode() if session.authenticated else None,
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "cc": str(msg["cc"]) if msg["cc"] else None,
            "bcc_header": msg["bcc"] is not None,
            "body_type": body.get_content_type() if body else None,
            "body": body.get_content() if body else None,
            "attachments": [
                {
                    "filename": part.get_filename(),
                    "content_type": part.get_content_type(),
                    "content_b64": base64.b64encode(part.get_payload(decode=True)).decode(),
                }
                for part in msg.iter_attachments()
            ],
        }
        n = next(counter)
        tmp = os.path.join(out_dir, f".{n}.json")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out_dir, f"{n}.json"))
        return "250 Message accepted for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    authenticator=authenticator,
    auth_require_tls=False,
    auth_required=False,
)
controller.start()
print("ready", flush=True)
threading.Event().wait()
