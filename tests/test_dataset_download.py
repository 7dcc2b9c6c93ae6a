"""tailclip.tools.download end to end against a local HTTP server serving fake split files and archives,
and the split files that ship in the repository."""
import io
import os
import shutil
import subprocess
import tarfile
import time
import zipfile
from dataclasses import replace

import pytest

import tailclip.tools.download
from clip.download import DownloadError, sha256_of
from process_group import free_port
from tailclip.tools.download import (
    BENCHMARKS,
    SHIPPED_DATASETS,
    SplitFileError,
    download_benchmark,
    fetch_split_files,
    listed_images,
    main,
)

VOC_IMAGES = {
    "VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg": b"jpeg 1",
    "VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg": b"jpeg 2",
    "VOCdevkit/VOC2007/JPEGImages/000001.jpg": b"jpeg 3",
}
VOC_UNLISTED = "VOCdevkit/VOC2012/Annotations/2008_000001.xml"
COCO_IMAGES = {
    "train2017/000000000001.jpg": b"coco 1",
    "train2017/000000000002.jpg": b"coco 2",
    "val2017/000000000003.jpg": b"coco 3",
    "val2017/000000000004.jpg": b"coco 4",
}


def serve_split_files(server, folder: str, files: dict[str, str]) -> dict[str, str]:
    """Write fake split files under lmpt/<folder>/ on the server; return their sha256 table."""
    directory = server.root / "lmpt" / folder
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return {name: sha256_of(directory / name) for name in files}


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.fixture(autouse=True)
def no_shipped_files(tmp_path_factory, monkeypatch):
    """The fake benchmarks have no shipped split files (an empty folder stands in for the
    repository's datasets/), unless a test puts some there."""
    shipped = tmp_path_factory.mktemp("shipped")
    monkeypatch.setattr(tailclip.tools.download, "SHIPPED_DATASETS", shipped)
    return shipped


def ship(shipped, server, folder: str, name: str) -> None:
    """Copy the server's fake split files of ``folder`` into ``shipped/name``, as the repository does."""
    shutil.copytree(server.root / "lmpt" / folder, shipped / name)


@pytest.fixture
def fake_voc(http_server):  # noqa: F811
    """The server holds fake VOC-MLT split files and two tarballs; returns (server, spec)."""
    train = [path for path in VOC_IMAGES if "VOC2012" in path]
    hashes = serve_split_files(http_server, "voc", {
        "voc_lt_train.txt": "".join(f"{path} 0 3 \n" for path in train),
        "voc_lt_test.txt": "VOCdevkit/VOC2007/JPEGImages/000001.jpg 1\n",
        "voc_lt_captions.txt": "".join(f"{path} a cat on a mat\n" for path in train),
        "voc_labels.txt": "aeroplane 0\nbicycle 1\n",
    })
    archives = http_server.root / "archives"
    archives.mkdir()
    write_tar(archives / "VOC2012.tar", {**{p: d for p, d in VOC_IMAGES.items() if "VOC2012" in p},
                                         VOC_UNLISTED: b"<annotation/>"})
    write_tar(archives / "VOC2007.tar", {p: d for p, d in VOC_IMAGES.items() if "VOC2007" in p})
    spec = replace(BENCHMARKS["voc_mlt"], dataset=replace(BENCHMARKS["voc_mlt"].dataset, sha256=hashes), archives={
        "VOCdevkit/VOC2012/": f"{http_server.url}/archives/VOC2012.tar",
        "VOCdevkit/VOC2007/": f"{http_server.url}/archives/VOC2007.tar",
    })
    return http_server, spec


@pytest.fixture
def fake_coco(http_server, monkeypatch):  # noqa: F811
    """Fake COCO-MLT split files, per-image host and zips, installed as BENCHMARKS["coco_mlt"]."""
    train = [path for path in COCO_IMAGES if path.startswith("train")]
    hashes = serve_split_files(http_server, "coco", {
        "coco_lt_train.txt": "".join(f"{path} 0 \n" for path in train),
        "coco_lt_test.txt": "".join(f"{path} 9\n" for path in COCO_IMAGES if path.startswith("val")),
        "coco_lt_captions.txt": "".join(f"{path} a dog\n" for path in train),
        "coco_labels.txt": "person 0\ntraffic light 9\n",
    })
    for path, data in COCO_IMAGES.items():
        (http_server.root / "img" / path).parent.mkdir(parents=True, exist_ok=True)
        (http_server.root / "img" / path).write_bytes(data)
    (http_server.root / "zips").mkdir()
    write_zip(http_server.root / "zips" / "train2017.zip",
              {**{p: d for p, d in COCO_IMAGES.items() if p.startswith("train")}, "train2017/unlisted.jpg": b"x"})
    write_zip(http_server.root / "zips" / "val2017.zip",
              {p: d for p, d in COCO_IMAGES.items() if p.startswith("val")})
    coco = BENCHMARKS["coco_mlt"]
    spec = replace(coco, dataset=replace(coco.dataset, sha256=hashes), image_url=f"{http_server.url}/img", archives={
        "train2017/": f"{http_server.url}/zips/train2017.zip",
        "val2017/": f"{http_server.url}/zips/val2017.zip",
    })
    monkeypatch.setitem(BENCHMARKS, "coco_mlt", spec)
    monkeypatch.setenv("TAILCLIP_DATA_MIRROR", f"{http_server.url}/lmpt")
    return http_server


def test_voc_download_extracts_listed_images_and_reruns_do_nothing(fake_voc, tmp_path):
    server, spec = fake_voc
    dataset_dir = download_benchmark("voc_mlt", tmp_path, mirror=f"{server.url}/lmpt", spec=spec, progress=False)
    assert dataset_dir == tmp_path / "voc_mlt"
    for name in spec.dataset.sha256:
        assert (dataset_dir / name).read_bytes() == (server.root / "lmpt" / "voc" / name).read_bytes()
    for path, data in VOC_IMAGES.items():
        assert (dataset_dir / path).read_bytes() == data
    assert not (dataset_dir / VOC_UNLISTED).exists()  # only what the benchmark lists
    assert sorted(p.name for p in dataset_dir.iterdir()) == sorted([*spec.dataset.sha256, "VOCdevkit"])

    requests_so_far = len(server.requests)
    download_benchmark("voc_mlt", tmp_path, mirror=f"{server.url}/lmpt", spec=spec, progress=False)
    assert len(server.requests) == requests_so_far

    (dataset_dir / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").unlink()
    download_benchmark("voc_mlt", tmp_path, mirror=f"{server.url}/lmpt", spec=spec, progress=False)
    assert [path for path, _ in server.requests[requests_so_far:]] == ["/archives/VOC2007.tar"]
    assert (dataset_dir / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").read_bytes() == b"jpeg 3"


def test_voc_full_extracts_whole_archives(fake_voc, tmp_path):
    server, spec = fake_voc
    download_benchmark("voc_mlt", tmp_path, full=True, mirror=f"{server.url}/lmpt", spec=spec, progress=False)
    assert (tmp_path / "voc_mlt" / VOC_UNLISTED).read_bytes() == b"<annotation/>"


def test_listed_image_absent_from_archive_is_named(fake_voc, tmp_path):
    server, spec = fake_voc
    write_tar(server.root / "archives" / "VOC2007.tar", {"VOCdevkit/VOC2007/JPEGImages/000002.jpg": b"other"})
    with pytest.raises(DownloadError, match=r"1 listed images are still missing.*VOC2007/JPEGImages/000001\.jpg"):
        download_benchmark("voc_mlt", tmp_path, mirror=f"{server.url}/lmpt", spec=spec, progress=False)


def test_unsafe_archive_is_refused_and_removed(fake_voc, tmp_path):
    server, spec = fake_voc
    write_tar(server.root / "archives" / "VOC2007.tar", {"../escaped.jpg": b"evil", **VOC_IMAGES})
    with pytest.raises(DownloadError, match="damaged or unsafe"):
        download_benchmark("voc_mlt", tmp_path, full=True, mirror=f"{server.url}/lmpt", spec=spec,
                           progress=False)
    assert not (tmp_path / "escaped.jpg").exists()
    assert not (tmp_path / "voc_mlt" / "VOC2007.tar").exists()


def test_split_file_with_wrong_hash_stops_the_command(fake_coco, monkeypatch, tmp_path):
    wrong = {**BENCHMARKS["coco_mlt"].dataset.sha256, "coco_labels.txt": "f" * 64}
    coco = BENCHMARKS["coco_mlt"]
    monkeypatch.setitem(BENCHMARKS, "coco_mlt", replace(coco, dataset=replace(coco.dataset, sha256=wrong)))
    with pytest.raises(SystemExit) as info:
        main(["coco_mlt", "--root", str(tmp_path)])
    assert str(info.value.code).startswith("error: sha256 mismatch")
    assert str(tmp_path / "coco_mlt" / "coco_labels.txt") in info.value.code and "f" * 64 in info.value.code
    assert not (tmp_path / "coco_mlt" / "coco_labels.txt").exists()


def test_shipped_split_files_are_copied_and_only_images_are_downloaded(fake_coco, no_shipped_files, tmp_path):
    server = fake_coco
    ship(no_shipped_files, server, "coco", "coco_mlt")
    main(["coco_mlt", "--root", str(tmp_path)])
    assert not any(path.startswith("/lmpt/") for path, _ in server.requests)
    for name in BENCHMARKS["coco_mlt"].dataset.sha256:
        assert (tmp_path / "coco_mlt" / name).read_bytes() == (no_shipped_files / "coco_mlt" / name).read_bytes()
    for path, data in COCO_IMAGES.items():
        assert (tmp_path / "coco_mlt" / "images" / path).read_bytes() == data


@pytest.mark.parametrize("where", ["shipped", "dataset folder"])
def test_a_changed_split_file_is_an_error_naming_it(fake_coco, no_shipped_files, tmp_path, where):
    server = fake_coco
    ship(no_shipped_files, server, "coco", "coco_mlt")
    folder = no_shipped_files / "coco_mlt" if where == "shipped" else tmp_path / "coco_mlt"
    folder.mkdir(exist_ok=True)
    changed = folder / "coco_lt_test.txt"
    changed.write_text("val2017/000000000003.jpg 9 1\n")  # one label more than published
    with pytest.raises(SystemExit) as info:
        main(["coco_mlt", "--root", str(tmp_path)])
    message = info.value.code
    expected = BENCHMARKS["coco_mlt"].dataset.sha256["coco_lt_test.txt"]
    assert message.startswith(f"error: {changed} has sha256 {sha256_of(changed)}, expected {expected}")
    assert "changed or is corrupt" in message
    assert changed.read_text() == "val2017/000000000003.jpg 9 1\n"  # kept, for the user to inspect
    assert server.requests == []


def test_missing_split_files_are_downloaded_from_a_file_url(fake_voc, tmp_path):
    server, spec = fake_voc
    download_benchmark("voc_mlt", tmp_path, mirror=(server.root / "lmpt").as_uri(), spec=spec, progress=False)
    assert not any(path.startswith("/lmpt/") for path, _ in server.requests)
    for name in spec.dataset.sha256:
        assert (tmp_path / "voc_mlt" / name).read_bytes() == (server.root / "lmpt" / "voc" / name).read_bytes()


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_the_repository_split_files_pass_without_a_network(name, tmp_path):
    # A mirror nobody listens on: the shipped files are checked, and nothing is fetched.
    dead = f"http://127.0.0.1:{free_port()}"
    fetch_split_files(BENCHMARKS[name], SHIPPED_DATASETS / name, mirror=dead, progress=False)
    fetch_split_files(BENCHMARKS[name], tmp_path / name, mirror=dead, progress=False,
                      shipped_dir=SHIPPED_DATASETS / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(BENCHMARKS[name].dataset.sha256)
    with pytest.raises(SplitFileError, match=f"{tmp_path / name / 'x'}"[:-1]):
        (tmp_path / name / next(iter(BENCHMARKS[name].dataset.sha256))).write_text("changed\n")
        fetch_split_files(BENCHMARKS[name], tmp_path / name, mirror=dead, progress=False)


def test_coco_per_image_names_the_missing_one_then_resumes(fake_coco, tmp_path):
    server = fake_coco
    absent = "val2017/000000000004.jpg"
    (server.root / "img" / absent).unlink()
    with pytest.raises(SystemExit) as info:
        main(["coco_mlt", "--root", str(tmp_path), "--workers", "2"])
    message = info.value.code
    assert "1 of 4 images could not be downloaded" in message and absent in message and "404" in message
    images = tmp_path / "coco_mlt" / "images"
    for path, data in COCO_IMAGES.items():
        assert (images / path).exists() == (path != absent)
        if path != absent:
            assert (images / path).read_bytes() == data

    (server.root / "img" / absent).write_bytes(COCO_IMAGES[absent])
    requests_so_far = len(server.requests)
    main(["coco_mlt", "--root", str(tmp_path)])
    assert [path for path, _ in server.requests[requests_so_far:]] == [f"/img/{absent}"]
    assert (images / absent).read_bytes() == COCO_IMAGES[absent]


def test_coco_unreachable_image_host_fails_at_the_first_image(fake_coco, tmp_path):
    dead_host = f"http://127.0.0.1:{free_port()}"
    spec = replace(BENCHMARKS["coco_mlt"], image_url=dead_host)
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_benchmark("coco_mlt", tmp_path, spec=spec, progress=False)
    assert time.monotonic() - started < 10
    message = str(info.value)
    # Not the one image it tried: the archives that hold every missing image, where they go,
    # and that a rerun resumes.
    assert message.startswith(f"cannot reach {dead_host} (") and "000000000001.jpg" not in message
    assert (f"The 4 missing images come from 2 archives: {fake_coco.url}/zips/train2017.zip, "
            f"{fake_coco.url}/zips/val2017.zip. Download them on another machine if need be, place them "
            f"in {tmp_path / 'coco_mlt'}/ and run `bash datasets/coco_mlt/download_coco_mlt.sh --full` "
            "again") in message
    assert "so a rerun resumes" in message and "images could not be downloaded" not in message


def test_voc_unreachable_archive_names_both_archives(fake_voc, tmp_path):
    server, spec = fake_voc
    dead_host = f"http://127.0.0.1:{free_port()}"
    spec = replace(spec, archives={prefix: url.replace(server.url, dead_host) for prefix, url in spec.archives.items()})
    with pytest.raises(DownloadError) as info:
        download_benchmark("voc_mlt", tmp_path, mirror=f"{server.url}/lmpt", spec=spec, progress=False)
    message = str(info.value)
    assert message.startswith(f"could not download {dead_host}/archives/VOC2012.tar (")
    assert (f"come from 2 archives: {dead_host}/archives/VOC2012.tar, {dead_host}/archives/VOC2007.tar. "
            f"Download them on another machine if need be, place them in {tmp_path / 'voc_mlt'}/ and run "
            "`bash datasets/voc_mlt/download_voc_mlt.sh` again") in message

    # Placed there by hand, the archives are used as they are.
    for url in spec.archives.values():
        shutil.copy(server.root / "archives" / url.rsplit("/", 1)[1], tmp_path / "voc_mlt")
    download_benchmark("voc_mlt", tmp_path, mirror=f"{server.url}/lmpt", spec=spec, progress=False)
    assert all((tmp_path / "voc_mlt" / path).read_bytes() == data for path, data in VOC_IMAGES.items())


def test_coco_full_extracts_the_official_zips(fake_coco, tmp_path):
    main(["coco_mlt", "--root", str(tmp_path), "--full"])
    images = tmp_path / "coco_mlt" / "images"
    for path, data in COCO_IMAGES.items():
        assert (images / path).read_bytes() == data
    assert (images / "train2017" / "unlisted.jpg").exists()
    assert not any(path.startswith("/img/") for path, _ in fake_coco.requests)
    assert not list((tmp_path / "coco_mlt").glob("*.zip"))


def run_wrapper(script, *args, cwd, env=None):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    return subprocess.run([script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_wrapper_scripts_run_from_another_folder(repo_root, tmp_path):
    result = run_wrapper(repo_root / "datasets/voc_mlt/download_voc_mlt.sh", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m tailclip.tools.download" in result.stdout and "--full" in result.stdout

    # A relative --root is the caller's: the shipped files are copied there, and a changed one
    # (the label file, checked last) stops the script, naming it, before any image is fetched.
    env = dict(os.environ, TAILCLIP_DATA_MIRROR=f"http://127.0.0.1:{free_port()}")
    changed = tmp_path / "data" / "coco_mlt" / "coco_labels.txt"
    changed.parent.mkdir(parents=True)
    changed.write_text("person 0\n")
    result = run_wrapper(repo_root / "datasets/coco_mlt/download_coco_mlt.sh", "--root", "data",
                         cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "error: data/coco_mlt/coco_labels.txt has sha256" in result.stderr
    assert (tmp_path / "data" / "coco_mlt" / "coco_lt_train.txt").read_bytes() == \
        (repo_root / "datasets" / "coco_mlt" / "coco_lt_train.txt").read_bytes()


def test_pinned_split_hashes_match_the_reference_files(shared_data):
    for name, spec in BENCHMARKS.items():
        assert sorted(spec.dataset.sha256) == sorted(p.name for p in (shared_data / name).glob("*.txt"))
        for file_name, sha256 in spec.dataset.sha256.items():
            assert sha256_of(shared_data / name / file_name) == sha256, f"{name}/{file_name}"


@pytest.mark.parametrize("name, count", [("voc_mlt", 1142 + 4952), ("coco_mlt", 1909 + 5000)])
def test_every_listed_image_of_the_real_splits_has_an_archive(shared_data, name, count):
    spec = BENCHMARKS[name]
    paths = listed_images(spec, shared_data / name)
    assert len(paths) == count
    assert all(sum(path.startswith(prefix) for prefix in spec.archives) == 1 for path in paths)
    assert all(path.endswith(".jpg") for path in paths)
