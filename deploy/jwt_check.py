#!/usr/bin/env python3
"""Checks keyward tokens with the Python standard library only, independently of keyward.

    jwt_check.py verify JWKS_FILE TOKEN   # RS256 signature against the JWKS; prints the kid
    jwt_check.py jti TOKEN                # prints the token's jti (no verification)
    jwt_check.py kids JWKS_FILE           # prints the JWKS's kids, sorted, one a line
    jwt_check.py field JSON_FILE NAME     # prints a top-level field of a JSON object
    jwt_check.py jtis AUDIT_JSON_FILE     # prints the jtis of `keyward audit --json`
"""

import base64
import hashlib
import json
import sys

# DigestInfo prefix of SHA-256 in an EMSA-PKCS1-v1_5 encoding (RFC 8017, section 9.2).
SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def to_int(text):
    return int.from_bytes(b64url(text), "big")


def verify(jwks_path, token):
    with open(jwks_path, encoding="utf-8") as f:
        keys = {key["kid"]: key for key in json.load(f)["keys"]}
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(b64url(header_b64))
    if header.get("alg") != "RS256":
        sys.exit(f"unexpected alg {header.get('alg')!r}: this check knows RS256 only")
    key = keys.get(header["kid"])
    if key is None:
        sys.exit(f"kid {header['kid']} is not in the JWKS")
    n, e = to_int(key["n"]), to_int(key["e"])
    size = (n.bit_length() + 7) // 8
    signature = b64url(signature_b64)
    if len(signature) != size:
        sys.exit("signature length does not match the key")
    encoded = pow(int.from_bytes(signature, "big"), e, n).to_bytes(size, "big")
    digest = hashlib.sha256(f"{header_b64}.{payload_b64}".encode()).digest()
    expected = b"\x00\x01" + b"\xff" * (size - 3 - len(SHA256_PREFIX) - len(digest)) + b"\x00"
    expected += SHA256_PREFIX + digest
    if encoded != expected:
        sys.exit("signature does not verify against the JWKS")
    print(header["kid"])


def main(argv):
    command = argv[1]
    if command == "verify":
        verify(argv[2], argv[3])
    elif command == "jti":
        print(json.loads(b64url(argv[2].split(".")[1]))["jti"])
    elif command == "kids":
        with open(argv[2], encoding="utf-8") as f:
            print("\n".join(sorted(key["kid"] for key in json.load(f)["keys"])))
    elif command == "field":
        with open(argv[2], encoding="utf-8") as f:
            print(json.load(f)[argv[3]])
    elif command == "jtis":
        with open(argv[2], encoding="utf-8") as f:
            print("\n".join(sorted(row["jti"] for row in json.load(f))))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
