#!/usr/bin/env python3
"""Seeds for the fuzz corpora (fuzz/corpus/TARGET/), from files in the
repository and, when given, a build output directory (`drover build --out`,
for example target/tmp/drover-qemu-image/out after the QEMU tests) and a
channel repository (`drover publish --repo`). The corpora the campaigns grew
from these seeds are committed; run this only to add seeds.

    python3 fuzz/seed.py [BUILD_OUT [REPO]]
"""
import hashlib
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def add(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / ("seed-" + hashlib.sha1(data).hexdigest())).write_bytes(data)


def toml_blocks(md):
    return re.findall(r"```toml\n(.*?)```", md.read_text(), re.S)


for block in toml_blocks(ROOT / "os-config/README.md"):
    add("node_config", block)
for block in toml_blocks(ROOT / "update-agent/README.md"):
    add("agent_config", block)
add("node_config", (ROOT / "examples/container-host.toml").read_text())
add("agent_config", """server = "http://10.0.2.100/"
channel = "stable"
poll-interval-secs = 15
poll-jitter-secs = 0
auto-update = true
halt-after-failures = 3
boot-complete-timeout-secs = 900
download-stall-timeout-secs = 120
trusted-keys = ["/etc/drover/keys/site.pub.pem"]

[reboot]
strategy = "etcd-lock"
window = { days = ["mon", "tue"], start = "02:00", length = "2h" }

[reboot.etcd]
endpoints = ["https://10.0.0.1:2379"]
group = "workers"
""")
add("agent_config", """[reboot]
strategy = "fleetlock"

[reboot.fleetlock]
url = "http://10.0.0.2:8080/"
group = "default"
""")
fixtures = ROOT / "core/tests/fixtures/ovmf-swtpm"
add("boot_record", (fixtures / "boot-record.json").read_bytes())
add("tcg_event_log", (fixtures / "binary_bios_measurements").read_bytes())

# Block indexes (core/src/blocks.rs): three frames, unsigned and with one
# (wrong) signature; a real one comes from a repository (below).
def block_index(lens, sigs):
    body = b"DRVBIX01" + struct.pack("<II", 4096, len(lens))
    body += struct.pack("<Q", sum(lens)) + bytes(range(32)) + bytes(32)
    for i, n in enumerate(lens):
        source = 8192 * i if i % 2 else 2**64 - 1
        body += struct.pack("<IIQ", n, max(1, n // 3), source)
        body += hashlib.sha256(bytes(n)).digest()
    body += struct.pack("<I", sigs) + bytes(96 * sigs)
    return body


add("block_index", block_index([8192, 262144, 5000], 0))
add("block_index", block_index([4096], 1))

# A small disk with Drover's partitions, for the GPT reader.
with tempfile.TemporaryDirectory() as t:
    disk = Path(t) / "disk.raw"
    disk.write_bytes(bytes(160 << 10))
    usr = "8484680c-9521-48c6-9c11-b0720656f69e"
    subprocess.run(
        ["sgdisk", "-a1", "-n1:40:+16K", "-t1:ef00", "-c1:EFI-SYSTEM",
         "-n3:0:+16K", f"-t3:{usr}", "-c3:USR-A", "-A3:set:48", "-A3:set:56",
         "-n4:0:+16K", f"-t4:{usr}", "-c4:USR-B",
         "-n9:0:0", "-c9:ROOT", str(disk)],
        check=True, capture_output=True)
    add("gpt_table", disk.read_bytes())

if len(sys.argv) > 1:
    out = Path(sys.argv[1])
    manifest = (out / "manifest.json").read_bytes()
    add("manifest", manifest)
    m = json.loads(manifest)
    # The real manifest made to describe a one-block image whose manifest
    # is at 8192 (the target folds the third word into 1024 + w % 65536).
    small = dict(m)
    small["filesystem"] = dict(m["filesystem"], size=4096)
    small["verity"] = dict(m["verity"], data_blocks=1, hash_offset=4096)
    small["manifest_offset"] = 8192
    locator = struct.pack("<QQQ", 4096, 4096, 8192 - 1024)
    add("signed_slot_reader", locator + json.dumps(small, indent=2).encode())
    add("install_json", (out / "install.json").read_bytes())
    with open(out / "usr.img", "rb") as f:
        f.seek(m["verity"]["hash_offset"])
        add("verity_superblock", f.read(4096))
        f.seek(0)
        head = f.read(4096)
        f.seek(m["manifest_offset"])
        envelope = f.read()
    # The header and envelope of the real image, brought close together:
    # the locator then points past the end, which the readers must refuse.
    add("slot_header", head[:1024] + envelope)
    add("locator_and_slot_reader", head[:1024] + envelope)
# Fleet coordination as etcd's JSON gateway and a FleetLock server send it.
add("fleet_records", '{"max":2,"holders":[{"id":"4f1c","since":1765000000}]}')
add("fleet_records", '{"version":"1.1.0","nodes":["4f1c","9a0b"],"groups":{"default":2}}')
add(
    "fleet_records",
    '{"header":{"revision":"7"},"kvs":[{"key":"L2Ryb3Zlci9yZWJvb3QtbG9jay9kZWZhdWx0",'
    '"value":"eyJtYXgiOjEsImhvbGRlcnMiOltdfQ==","mod_revision":"7"}],"count":"1"}',
)
add("fleet_records", '{"kind":"failed_lock","value":"semaphore is full"}')
if len(sys.argv) > 2:
    for f in (Path(sys.argv[2]) / "channels").glob("*.json"):
        add("channel_metadata", f.read_bytes())
    for f in sorted((Path(sys.argv[2]) / "releases").glob("*/usr.blocks.idx"))[:2]:
        add("block_index", f.read_bytes())
    for f in (Path(sys.argv[2]) / "tuf").glob("*/metadata/*.json"):
        add("tuf_metadata", f.read_bytes())
