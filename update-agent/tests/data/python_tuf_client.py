"""A second opinion on a Drover TUF channel: python-tuf's ngclient (the
reference implementation) refreshes the channel from a trusted root and
downloads targets, as the TUF specification's client workflow has it.

usage: python_tuf_client.py ROOT METADATA_URL TARGETS_URL WORKDIR [TARGET...]

Prints one JSON object: {"ok": true, "root": N, "timestamp": N,
"targets": {name: {"length": L, "sha256": H, "downloaded": bytes}}} or
{"ok": false, "error": "ExceptionName: message"} (exit status 1).
"""

import hashlib
import json
import os
import shutil
import sys

from tuf.ngclient import Updater


def main():
    root, metadata_url, targets_url, work, *names = sys.argv[1:]
    metadata_dir = os.path.join(work, "metadata")
    download_dir = os.path.join(work, "download")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(download_dir, exist_ok=True)
    if not os.path.exists(os.path.join(metadata_dir, "root.json")):
        shutil.copy(root, os.path.join(metadata_dir, "root.json"))
    try:
        updater = Updater(
            metadata_dir=metadata_dir,
            metadata_base_url=metadata_url,
            target_base_url=targets_url,
            target_dir=download_dir,
        )
        updater.refresh()
        out = {}
        for name in names:
            info = updater.get_targetinfo(name)
            if info is None:
                raise LookupError(f"no target {name}")
            path = updater.download_target(info)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[name] = {
                "length": info.length,
                "sha256": info.hashes["sha256"],
                "downloaded": digest,
                "custom": info.custom,
            }
        trusted = updater._trusted_set
        print(
            json.dumps(
                {
                    "ok": True,
                    "root": trusted.root.version,
                    "timestamp": trusted.timestamp.version,
                    "targets": out,
                }
            )
        )
    except Exception as e:  # noqa: BLE001 - the test reads the class name
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)


if __name__ == "__main__":
    main()
