"""Reading documents through fsspec: local paths, file:// URLs, gzip and S3 (a moto server on loopback)."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from docre.data.atlop import read_atlop
from docre.data.docred import read_docred
from docre.data.document import DocumentError, RelationInventory, cdr_inventory
from docre.data.io import Quarantined, checksum, detect_format, load_inventory, read_documents
from docre.data.pubtator import read_pubtator

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = {  # fixture name -> (format, how to read it directly)
    "cdr_sample.pubtator": ("pubtator", lambda lines: read_pubtator(lines, "direct")),
    "docred_sample.json": ("docred", lambda lines: read_docred(lines, "direct")),
    "cdr_sample.data": ("atlop", lambda lines: read_atlop(lines, "direct")),
}


def expected(name: str) -> list:
    with (FIXTURES / name).open() as f:
        return list(SAMPLES[name][1](f))


def gzip_copy(src: Path, dst: Path) -> Path:
    with src.open("rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    return dst


# ---------------------------------------------------------------- local, file://, gzip

@pytest.mark.parametrize("name", list(SAMPLES))
def test_local_file_url_and_gzip_read_the_same(name, tmp_path):
    want = expected(name)
    assert len(want) >= 2
    path = FIXTURES / name
    gz = gzip_copy(path, tmp_path / f"{name}.gz")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    for url in (str(path), path.as_uri(), str(gz), gz.as_uri()):
        assert list(read_documents(url)) == want, url
    # the format can be given when the name does not tell
    odd = tmp_path / "documents.input"
    shutil.copy(path, odd)
    assert list(read_documents(str(odd), format=SAMPLES[name][0])) == want


def test_json_lines_and_txt_names(tmp_path):
    raws = json.loads((FIXTURES / "docred_sample.json").read_text())
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in raws))
    assert list(read_documents(str(jl))) == expected("docred_sample.json")
    txt = tmp_path / "abstracts.PubTator.txt"
    shutil.copy(FIXTURES / "cdr_sample.pubtator", txt)
    assert list(read_documents(str(txt))) == expected("cdr_sample.pubtator")


@pytest.mark.parametrize("url,fmt", [
    ("train.json", "docred"), ("s3://b/dev.JSON", "docred"), ("pred.jsonl.gz", "docred"),
    ("x/cdr.data", "atlop"), ("cdr.data.bz2", "atlop"),
    ("a.pubtator", "pubtator"), ("file:///a/b.pubtator.txt.xz", "pubtator"), ("bulk.txt.zst", "pubtator"),
])
def test_detect_format(url, fmt):
    assert detect_format(url) == fmt


@pytest.mark.parametrize("url", ["docs.csv", "docs.json.tar", "s3://bucket/docs", "docs.gz", "docs.pubtator.zip"])
def test_detect_format_unknown_suffix(url):
    with pytest.raises(ValueError) as info:
        detect_format(url)
    msg = str(info.value)
    assert msg.startswith(f"{url}: cannot tell the format from the name")
    assert "format='docred'|'pubtator'|'atlop'" in msg


def test_read_documents_unknown_suffix_or_format(tmp_path):
    path = tmp_path / "docs.csv"
    shutil.copy(FIXTURES / "cdr_sample.pubtator", path)
    with pytest.raises(ValueError, match="cannot tell the format"):
        list(read_documents(str(path)))
    with pytest.raises(ValueError, match="unknown format 'bioc'"):
        list(read_documents(str(path), format="bioc"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_documents(str(tmp_path / "nothing.pubtator")))


# ---------------------------------------------------------------- strict and lenient

def bad_pubtator(tmp_path: Path) -> Path:
    """The fixture with document 9100002's second mention moved off its text."""
    lines = (FIXTURES / "cdr_sample.pubtator").read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith("9100002\t32\t41\t"))
    lines[i] = lines[i].replace("\t32\t41\t", "\t33\t42\t")
    path = tmp_path / "bad.pubtator"
    path.write_text("".join(lines))
    return path


def test_strict_mode_raises_naming_the_url(tmp_path):
    path = bad_pubtator(tmp_path)
    docs = read_documents(path.as_uri())
    assert next(docs).id == "9100001"
    with pytest.raises(DocumentError) as info:
        next(docs)
    assert info.value.source == path.as_uri()
    assert info.value.where == "line 18, document '9100002'"
    assert "mention 'Borvalene' does not match the text at [33, 42): 'orvalene '" in str(info.value)


def test_lenient_mode_quarantines(tmp_path):
    path = gzip_copy(bad_pubtator(tmp_path), tmp_path / "bad.pubtator.gz")
    quarantine: list[Quarantined] = []
    docs = list(read_documents(str(path), quarantine=quarantine))
    assert [d.id for d in docs] == ["9100001", "9100003"]
    assert docs == [expected("cdr_sample.pubtator")[i] for i in (0, 2)]
    assert quarantine == [Quarantined(str(path), "line 18, document '9100002'",
                                      "mention 'Borvalene' does not match the text at [33, 42): 'orvalene '")]
    assert len(docs) + len(quarantine) == 3


def test_lenient_mode_docred_and_atlop(tmp_path):
    raws = json.loads((FIXTURES / "docred_sample.json").read_text())
    raws[0]["labels"][0]["r"] = "P999"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raws))
    inventory = load_inventory(str(FIXTURES / "rel_info_sample.json"))
    quarantine: list[Quarantined] = []
    docs = list(read_documents(str(path), inventory=inventory, quarantine=quarantine))
    assert [d.id for d in docs] == ["The Silver Ferns"]
    assert [(q.where, q.reason) for q in quarantine] == [
        ("document 0 ('Lake Varnholm')", "label 0->2: unknown relation id 'P999'")]
    # the ATLOP reader takes its relation from the inventory
    quarantine = []
    docs = list(read_documents(str(FIXTURES / "cdr_sample.data"), inventory=cdr_inventory(), quarantine=quarantine))
    assert [d.id for d in docs] == [d.id for d in expected("cdr_sample.data")] and quarantine == []


# ---------------------------------------------------------------- inventory and checksum

def test_load_inventory(tmp_path):
    assert load_inventory("cdr").ids == ["Na", "CID"]
    assert load_inventory("cdr").pair_types == [("Chemical", "Disease")]
    rel = load_inventory((FIXTURES / "rel_info_sample.json").as_uri())
    assert rel.ids == ["Na", "P17", "P27", "P131", "P569"] and rel.name("P17") == "country"
    saved = tmp_path / "inventory.json.gz"
    with gzip.open(saved, "wt") as f:
        f.write(cdr_inventory().to_json())
    assert load_inventory(str(saved)).to_json() == cdr_inventory().to_json()
    inferred = load_inventory(None, expected("docred_sample.json"))
    assert inferred.ids == ["Na", "P131", "P17", "P27", "P569"] and inferred.pair_types is None
    assert load_inventory(None).ids == ["Na"]
    assert isinstance(inferred, RelationInventory)


def test_checksum(tmp_path):
    a = tmp_path / "one" / "cdr_sample.pubtator"
    a.parent.mkdir()
    shutil.copy(FIXTURES / "cdr_sample.pubtator", a)
    base = checksum([str(a)])
    assert len(base) == 64 and base == checksum([str(a)])
    # the same bytes under the same name anywhere, by path or URL, are the same input
    assert checksum([str(FIXTURES / "cdr_sample.pubtator")]) == base == checksum([a.as_uri()])
    data = bytearray(a.read_bytes())
    i = data.index(b"Halomedin")
    data[i] = ord("h")
    a.write_bytes(bytes(data))
    changed = checksum([str(a)])
    assert changed != base
    data[i] = ord("H")
    a.write_bytes(bytes(data))
    assert checksum([str(a)]) == base
    # order and file names matter; gzip is checksummed as stored
    b = FIXTURES / "docred_sample.json"
    assert checksum([str(a), str(b)]) != checksum([str(b), str(a)])
    renamed = tmp_path / "other.pubtator"
    shutil.copy(a, renamed)
    assert checksum([str(renamed)]) != base
    assert checksum([str(gzip_copy(a, tmp_path / "cdr_sample.pubtator.gz"))]) != base
    assert checksum([]) == checksum(())


# ---------------------------------------------------------------- S3 on loopback (fixtures in conftest.py)

def test_s3_reads_the_same_as_local(s3_bucket, tmp_path):
    fs, bucket = s3_bucket
    local = FIXTURES / "cdr_sample.pubtator"
    gz = gzip_copy(local, tmp_path / "cdr_sample.pubtator.gz")
    fs.put(str(local), f"{bucket}/in/cdr_sample.pubtator")
    fs.put(str(gz), f"{bucket}/in/gz/cdr_sample.pubtator.gz")
    fs.put(str(FIXTURES / "docred_sample.json"), f"{bucket}/in/docred_sample.json")
    want = list(read_documents(str(local)))
    assert list(read_documents(f"s3://{bucket}/in/cdr_sample.pubtator")) == want
    assert list(read_documents(f"s3://{bucket}/in/gz/cdr_sample.pubtator.gz")) == want
    assert list(read_documents(f"s3://{bucket}/in/docred_sample.json")) == expected("docred_sample.json")
    # same bytes and name: the same checksum as the local file (cache keys agree)
    assert checksum([f"s3://{bucket}/in/cdr_sample.pubtator"]) == checksum([str(local)])
    assert checksum([f"s3://{bucket}/in/gz/cdr_sample.pubtator.gz"]) == checksum([str(gz)])


def test_s3_lenient_and_missing_key(s3_bucket, tmp_path):
    fs, bucket = s3_bucket
    fs.put(str(bad_pubtator(tmp_path)), f"{bucket}/bad.pubtator")
    quarantine: list[Quarantined] = []
    url = f"s3://{bucket}/bad.pubtator"
    assert [d.id for d in read_documents(url, quarantine=quarantine)] == ["9100001", "9100003"]
    assert [(q.source, q.where) for q in quarantine] == [(url, "line 18, document '9100002'")]
    with pytest.raises(FileNotFoundError):
        list(read_documents(f"s3://{bucket}/absent.pubtator"))


def test_s3_endpoint_from_fsspec_config(s3_endpoint, s3_bucket, monkeypatch):
    """FSSPEC_S3_ENDPOINT_URL works too, but fsspec reads it once, when it is imported.

    The variable is applied here the way fsspec does at import, with
    AWS_ENDPOINT_URL removed, so only the fsspec config points at the server.
    """
    import fsspec.config
    import s3fs
    fs, bucket = s3_bucket
    fs.put(str(FIXTURES / "cdr_sample.pubtator"), f"{bucket}/cdr_sample.pubtator")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    conf: dict = {}
    fsspec.config.set_conf_env(conf, {"FSSPEC_S3_ENDPOINT_URL": s3_endpoint})
    assert conf == {"s3": {"endpoint_url": s3_endpoint}}
    monkeypatch.setitem(fsspec.config.conf, "s3", conf["s3"])
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        docs = list(read_documents(f"s3://{bucket}/cdr_sample.pubtator"))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert docs == expected("cdr_sample.pubtator")
