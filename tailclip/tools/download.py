"""Fetch the VOC-MLT and COCO-MLT benchmarks into `datasets/<name>/`.

    python -m tailclip.tools.download voc_mlt|coco_mlt [--root DIR] [--full] [--workers N]

The split, label and caption files ship in the repository (`datasets/<name>/`, the LMPT
repository's files at a pinned commit); each is checked against its pinned sha256, and one
that differs is an error naming it. A dataset folder elsewhere (--root) gets copies of the
shipped files; only a file missing from both is downloaded from LMPT. Images come from the
official hosts: the VOC2012
trainval and VOC2007 test tarballs (only the listed images are extracted unless --full),
and for COCO the 6,909 listed images one by one (about 1 GB) unless --full fetches the
official train2017/val2017 zips (19 GB). Re-runs skip everything already in place and
resume partial downloads.
"""
import argparse
import os
import posixpath
import shutil
import tarfile
import urllib.error
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from clip.download import DownloadError, download, sha256_of
from tailclip import REPO_ROOT
from tailclip.data.datasets import DATASETS, DatasetSpec
from tailclip.engine.progress import show_progress
from tailclip.errors import TailCLIPError
from tailclip.wording import count

LMPT_COMMIT = "aab39caca28362bfb9d9340f9c8a5cd75614e130"
LMPT_DATA_URL = f"https://raw.githubusercontent.com/richard-peng-xia/LMPT/{LMPT_COMMIT}/data"
MIRROR_ENV = "TAILCLIP_DATA_MIRROR"  # replaces LMPT_DATA_URL, e.g. a local copy
SHIPPED_DATASETS = REPO_ROOT / "datasets"  # the split files in the repository, one folder per benchmark
SHOWN_FAILURES = 5


@dataclass(frozen=True)
class Benchmark:
    """Where one benchmark's files (``dataset``, ``tailclip.data.DATASETS``) come from."""
    dataset: DatasetSpec
    lmpt_folder: str              # folder under the LMPT repository's data/
    archives: dict[str, str]      # listed-path prefix -> official archive holding those images
    image_url: str | None = None  # per-image host (listed path appended); None: archives only


BENCHMARKS = {
    "voc_mlt": Benchmark(
        DATASETS["voc_mlt"],
        lmpt_folder="voc",
        archives={
            "VOCdevkit/VOC2012/": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "VOCdevkit/VOC2007/": "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
        },
    ),
    "coco_mlt": Benchmark(
        DATASETS["coco_mlt"],
        lmpt_folder="coco",
        archives={
            "train2017/": "http://images.cocodataset.org/zips/train2017.zip",
            "val2017/": "http://images.cocodataset.org/zips/val2017.zip",
        },
        image_url="http://images.cocodataset.org",
    ),
}


class SplitFileError(TailCLIPError):
    """A split, label or caption file does not have its pinned sha256."""


def check_split_file(path: Path, sha256: str) -> None:
    """Raise `SplitFileError` naming `path` unless its sha256 is `sha256`."""
    actual = sha256_of(path)
    if actual != sha256:
        raise SplitFileError(f"{path} has sha256 {actual}, expected {sha256}: the benchmark's file was "
                             "changed or is corrupt; restore it (git checkout -- datasets/ in the "
                             "repository, or delete a copy elsewhere to fetch it again)")


def fetch_split_files(spec: Benchmark, dataset_dir: Path, mirror: str | None = None,
                      progress: bool = True, shipped_dir: Path | None = None) -> None:
    """Make sure `dataset_dir` holds every split/label/caption file with its pinned sha256.

    A file already there is checked; a missing one is copied from `shipped_dir` (the
    repository's copy, checked too) and downloaded from LMPT only when that has none either.
    """
    base = (mirror or os.environ.get(MIRROR_ENV) or LMPT_DATA_URL).rstrip("/")
    for name, sha256 in spec.dataset.sha256.items():
        target = dataset_dir / name
        shipped = shipped_dir / name if shipped_dir is not None else None
        if not target.is_file() and shipped is not None and shipped.is_file():
            check_split_file(shipped, sha256)
            dataset_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shipped, target)
        if target.is_file():
            check_split_file(target, sha256)
        else:
            download(f"{base}/{spec.lmpt_folder}/{name}", dataset_dir, sha256=sha256, progress=progress)


def listed_images(spec: Benchmark, dataset_dir: Path) -> list[str]:
    """Image paths (relative to the image root) named in the split files, in file order, once each."""
    paths = {}
    for name in (spec.dataset.train_list, spec.dataset.test_list):
        for line in (dataset_dir / name).read_text().splitlines():
            if line.strip():
                paths[line.split()[0]] = None
    return list(paths)


def missing_images(image_root: Path, paths: list[str]) -> list[str]:
    """The paths that are not a file under `image_root`."""
    return [path for path in paths if not (image_root / path).is_file()]


def by_hand_hint(name: str, spec: Benchmark, dataset_dir: Path, missing: list[str]) -> str:
    """What to do when this machine cannot download the images: the archives that hold the
    missing ones, as a whole, where to put them, and that running the script again resumes."""
    needed = [url for prefix, url in spec.archives.items() if any(path.startswith(prefix) for path in missing)]
    them = "it" if len(needed) == 1 else "them"
    rerun = f"bash datasets/{name}/download_{name}.sh" + (" --full" if spec.image_url else "")
    return (f"The {count(len(missing), 'missing image')} come from {count(len(needed), 'archive')}: "
            f"{', '.join(needed)}. Download {them} on another machine if need be, place {them} in "
            f"{dataset_dir}/ and run `{rerun}` again: it extracts what is missing, and keeps the "
            "images already there and any partial download, so a rerun resumes.")


def fetch_images(base_url: str, image_root: Path, paths: list[str], workers: int,
                 progress: bool = True, by_hand: str = "") -> None:
    """Download each image `base_url/<path>` to `image_root/<path>`, `workers` at a time;
    `by_hand` (`by_hand_hint`) ends the error when they cannot be."""
    failures = []

    def fetch(path: str) -> DownloadError | None:
        try:
            download(f"{base_url}/{path}", (image_root / path).parent, progress=False)
        except DownloadError as error:
            failures.append(f"{path} ({error.__cause__ or error})")
            return error
        return None

    # The first image goes alone: when the host gives no HTTP answer at all (offline, DNS),
    # stop at once instead of failing thousands of times.
    first_error = fetch(paths[0])
    if first_error is not None and not isinstance(first_error.__cause__, urllib.error.HTTPError):
        raise DownloadError(f"cannot reach {base_url} ({first_error.__cause__ or first_error}). "
                            f"{by_hand}") from first_error
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        jobs = [pool.submit(fetch, path) for path in paths[1:]]
        for _ in tqdm(as_completed(jobs), total=len(paths), initial=1, unit="img", desc="images",
                      disable=not progress):
            pass
    finally:  # on Ctrl-C, drop the queued downloads instead of waiting for them
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise DownloadError(f"{len(failures)} of {len(paths)} images could not be downloaded from "
                            f"{base_url}, for example: {'; '.join(failures[:SHOWN_FAILURES])}. "
                            f"Run again to retry them. {by_hand}")


def fetch_archives(spec: Benchmark, dataset_dir: Path, image_root: Path, missing: list[str],
                   full: bool, progress: bool = True, by_hand: str = "") -> None:
    """Download each archive that holds a missing image, extract it into `image_root`, delete it.

    Only the missing images are extracted unless `full`, which extracts whole archives. An
    archive already in `dataset_dir` is used as it is.
    """
    for prefix, url in spec.archives.items():
        wanted = {path for path in missing if path.startswith(prefix)}
        if not wanted:
            continue
        try:
            archive = download(url, dataset_dir, progress=progress)
        except DownloadError as error:
            raise DownloadError(f"could not download {url} ({error.__cause__ or error}). {by_hand}") from error
        print(f"extracting {archive.name} into {image_root}")
        try:
            extract(archive, image_root, None if full else wanted)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
            archive.unlink()
            raise DownloadError(f"{archive} is damaged or unsafe ({error}); it was removed, "
                                "run again to download it anew") from error
        archive.unlink()


def extract(archive: Path, destination: Path, members: set[str] | None = None) -> None:
    """Extract a .tar or .zip archive (only `members`, if given) without writing outside `destination`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zip_file:  # ZipFile.extract drops absolute and ".." parts
            names = [name for name in zip_file.namelist() if members is None or name in members]
            zip_file.extractall(destination, names)
        return
    with tarfile.open(archive) as tar:
        chosen = [member for member in tar
                  if members is None or posixpath.normpath(member.name) in members]
        tar.extractall(destination, chosen, filter="data")  # "data" refuses links and paths leaving it


def download_benchmark(name: str, data_root: str | Path, full: bool = False, workers: int = 16,
                       mirror: str | None = None, spec: Benchmark | None = None,
                       progress: bool = True, shipped_root: Path | None = None) -> Path:
    """Put benchmark `name` (split files and every listed image) into `data_root/name`; return it.

    `spec` replaces the entry of `BENCHMARKS` (tests use it for fake files and hosts);
    `mirror` replaces the LMPT address (default `$TAILCLIP_DATA_MIRROR`); `shipped_root`
    the folder of the repository's split files (default `SHIPPED_DATASETS`).
    Raises `SplitFileError` for a split file without its pinned sha256 and `DownloadError`
    when anything is still missing at the end.
    """
    spec = spec or BENCHMARKS[name]
    dataset_dir = Path(data_root).expanduser() / name
    image_root = dataset_dir / spec.dataset.image_root
    print(f"{name}: checking the split files in {dataset_dir}")
    fetch_split_files(spec, dataset_dir, mirror, progress, (shipped_root or SHIPPED_DATASETS) / name)
    paths = listed_images(spec, dataset_dir)
    missing = missing_images(image_root, paths)
    if missing:
        print(f"{name}: {len(missing)} of {len(paths)} listed images missing under {image_root}")
        by_hand = by_hand_hint(name, spec, dataset_dir, missing)
        if spec.image_url and not full:
            fetch_images(spec.image_url, image_root, missing, workers, progress, by_hand)
        else:
            fetch_archives(spec, dataset_dir, image_root, missing, full, progress, by_hand)
        still_missing = missing_images(image_root, missing)
        if still_missing:
            raise DownloadError(f"{len(still_missing)} listed images are still missing under {image_root} "
                                f"after the download, for example: {', '.join(still_missing[:SHOWN_FAILURES])}")
    print(f"{name}: all {len(paths)} listed images present under {image_root}")
    return dataset_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tailclip.tools.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(BENCHMARKS))
    parser.add_argument("--root", default=str(REPO_ROOT / "datasets"),
                        help="folder holding one folder per dataset, as the config's data_root "
                             "(default: %(default)s)")
    parser.add_argument("--full", action="store_true",
                        help="coco_mlt: the official train2017/val2017 zips (19 GB) instead of only the "
                             "listed images; voc_mlt: extract the whole tarballs")
    parser.add_argument("--workers", type=int, default=16, help="parallel image downloads (default: 16)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        download_benchmark(args.dataset, args.root, full=args.full, workers=args.workers,
                           progress=show_progress())
    except (DownloadError, SplitFileError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
