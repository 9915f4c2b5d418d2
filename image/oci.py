#!/usr/bin/env python3
"""Assembles a one-layer OCI image without a container daemon or a registry.

    oci.py --name REF --out DIR [--entrypoint JSON] [--cmd JSON] [--env K=V]...
           [--user UID] FILE...

Each FILE is `SRC:DEST[:MODE]` (a file put at DEST in the image, MODE in octal,
default 0755 for executables and 0644 otherwise) or `@link:DEST:TARGET` (a
symbolic link). Parent directories are created (0755).

Output, byte for byte the same for the same inputs:
  DIR/<base>/            an OCI image layout (oci-layout, index.json, blobs/)
  DIR/<base>.tar         that layout as one tar, with a docker-archive
                         manifest.json too, so `ctr images import`,
                         `docker load` and `skopeo copy oci-archive:` all take it.
Every tar (the layer and the archive) has sorted names, uid/gid 0, no owner
names and mtime 0; gzip carries no name and mtime 0. <base> is the last path
component of REF without its tag (`ghcr.io/vcluster-dev/vcluster:0.1.0` ->
`vcluster`).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def tar_info(name, kind, mode, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def build_layer(files):
    """files: dest -> ("file", src, mode) | ("link", target). Returns tar bytes."""
    entries = {}
    for dest in files:
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]) + "/", ("dir",))
        entries["/".join(parts)] = files[dest]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(entries):
            e = entries[name]
            if e[0] == "dir":
                tar.addfile(tar_info(name.rstrip("/"), tarfile.DIRTYPE, 0o755))
            elif e[0] == "link":
                tar.addfile(tar_info(name, tarfile.SYMTYPE, 0o777, linkname=e[1]))
            else:
                with open(e[1], "rb") as f:
                    data = f.read()
                tar.addfile(tar_info(name, tarfile.REGTYPE, e[2], len(data)), io.BytesIO(data))
    return buf.getvalue()


def gz(data):
    buf = io.BytesIO()
    level = int(os.environ.get("VCLUSTER_IMAGE_GZIP_LEVEL", "9"))
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as g:
        g.write(data)
    return buf.getvalue()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_files(specs):
    files = {}
    for spec in specs:
        if spec.startswith("@link:"):
            _, dest, target = spec.split(":", 2)
            files[dest] = ("link", target)
            continue
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            sys.exit(f"oci.py: bad file spec {spec!r} (want SRC:DEST[:MODE])")
        src, dest = parts[0], parts[1]
        if not os.path.isfile(src):
            sys.exit(f"oci.py: {src} does not exist")
        if len(parts) == 3:
            mode = int(parts[2], 8)
        else:
            mode = 0o755 if os.stat(src).st_mode & stat.S_IXUSR else 0o644
        files[dest] = ("file", src, mode)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="image reference, e.g. ghcr.io/vcluster-dev/vcluster:0.1.0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--entrypoint", type=json.loads)
    ap.add_argument("--cmd", type=json.loads)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()

    layer = build_layer(parse_files(a.files))
    layer_gz = gz(layer)
    cfg = {"Env": a.env or ["PATH=/usr/local/bin:/usr/bin:/bin"], "WorkingDir": "/"}
    if a.entrypoint is not None:
        cfg["Entrypoint"] = a.entrypoint
    if a.cmd is not None:
        cfg["Cmd"] = a.cmd
    if a.user:
        cfg["User"] = a.user
    config = canonical({
        "architecture": a.arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "vcluster image/oci.py"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha(layer_gz), "size": len(layer_gz)}],
    })
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    index = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": sha(manifest),
            "size": len(manifest),
            "platform": {"architecture": a.arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag},
        }],
    })
    blobs = {sha(b)[7:]: b for b in (layer_gz, config, manifest)}
    docker = canonical([{
        "Config": "blobs/sha256/" + sha(config)[7:],
        "RepoTags": [a.name],
        "Layers": ["blobs/sha256/" + sha(layer_gz)[7:]],
    }])
    layout = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        "manifest.json": docker,
    }
    layout.update({f"blobs/sha256/{h}": b for h, b in blobs.items()})

    base = a.name.rsplit("/", 1)[-1].split(":", 1)[0]
    root = os.path.join(a.out, base)
    shutil.rmtree(root, ignore_errors=True)
    for rel, data in layout.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(tar_info(d, tarfile.DIRTYPE, 0o755))
        for rel in sorted(layout):
            tar.addfile(tar_info(rel, tarfile.REGTYPE, 0o644, len(layout[rel])), io.BytesIO(layout[rel]))
    with open(root + ".tar", "wb") as f:
        f.write(buf.getvalue())
    print(f"{a.name}: {root}.tar ({len(buf.getvalue())} bytes, layer {len(layer_gz)} bytes gzip, {len(layer)} raw)")


if __name__ == "__main__":
    main()
