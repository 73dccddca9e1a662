"""The one exception type that means "the user gave us something we cannot use".

The CLI turns a :class:`CnnkitError` into a single line on stderr and exit code 2;
anything else is a bug in cnnkit and keeps its traceback. Every reader of a file the user hands
over (checkpoints, weights, specs, images, data files) raises it, naming the file, what is wrong
and what to do; :func:`check_fits`, :func:`out_of_memory` and :func:`disk_full` word the two
everyday resource failures with the size that was needed, and :func:`check_unzip` and :func:`unzip`
refuse a zip member (a .keras file's weights, an .npz array, a dataset archive's file) that declares
more than real data inflates to, before it is inflated; :class:`DatasetReader` applies that rule to
the datasets of an HDF5 file (a Keras model's weights), which HDF5's own filters compress.
"""

from __future__ import annotations

import errno
import os
import re


class CnnkitError(ValueError):
    """Bad input: the message names what was wrong, the value received, and the fix.

    The one exception cnnkit raises for input it cannot use: a bad value, or a missing, damaged or
    crafted file. The CLI prints it as one line on stderr and exits with code 2; any other
    exception is a bug in cnnkit. It derives from ``ValueError``, so existing handlers catch it.
    Its one argument is the message: one line saying what was wrong, the value received, and what
    to do instead.

    Example:
        >>> import cnnkit
        >>> try:
        ...     cnnkit.create_model("resnet5")
        ... except cnnkit.CnnkitError as exc:
        ...     print(exc)
        unknown model name 'resnet5'; did you mean resnet50, ...?
    """


class CnnkitWarning(UserWarning):
    """Something about the input the user should know that does not stop the work (skipped files,
    small classes, labels that look like values); the CLI prints it as one ``warning: ...`` line."""


SHORT_CHARS = 400  # the most characters of an exception's text a one-line error quotes
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes (the dynamo ONNX exporter colours its page)
# PyTorch's C++ frames, appended to an error's reason under TORCH_SHOW_CPP_STACKTRACES=1: this line,
# then "C++ CapturedTraceback:" and "#4 c10::Error::Error(...) from libc10.so" lines (older builds:
# "frame #0: ..." lines), to the end of the text
_CPP_FRAMES = re.compile(r"Exception raised from .* \(most recent call first\):")
# the header of a Python traceback quoted in a text (a DataLoader worker's "Original Traceback") or
# of a TorchScript one ("Traceback of TorchScript (most recent call last):", "..., original code ...")
_TRACEBACK = re.compile(r"\s*(Original )?Traceback\b.*\(most recent call last\):\s*$")
# the line a traceback ends with: the exception's type and its reason ("RuntimeError: Given groups=1, ...")
_RAISED = re.compile(r"[A-Za-z_][\w.]*(: |:?\s*$)")
# the Python frames pybind11 appends to a Python error that crossed C++ code (a meta kernel's error
# inside TorchScript): an "At:" line, then "  path(line): function" lines
_AT = re.compile(r"\s*At:\s*$")
_AT_FRAME = re.compile(r"\s*\S.*\(\d+\): \S+\s*$")
# an exception's type said twice ("RuntimeError: RuntimeError: ..."), as TorchScript quotes such an error
_TWICE = re.compile(r"\b([A-Za-z_][\w.]*): \1: ")


def short_error(exc: BaseException, clause: bool = False) -> str:
    r"""An exception's text as one line for a :class:`CnnkitError` to quote: the reason whole, with
    the fix it names ("... is not supported. Support for this operator was added in version 16, try
    exporting with this version").

    Every run of whitespace (new lines, tabs) becomes one space and colour codes are dropped; an
    empty text is the exception's type name. Stacks are not reasons and are dropped: PyTorch's C++
    frames ("Exception raised from ... (most recent call first):" and all that follows), and the
    frames of a Python or TorchScript traceback quoted in the text (from its "Traceback ... (most
    recent call last):" line to the exception's own line, "RuntimeError: ...", which is kept), and
    the Python frames pybind11 appends after an "At:" line. A
    text longer than ``SHORT_CHARS`` keeps the whole sentences that fit (a first sentence longer
    than that alone is cut) and ends in ``" ..."``. A page with an "Exception summary" (the dynamo
    ONNX exporter's: the step that failed, next steps, then the errors behind it) is its first
    sentence and the first error of the summary. With ``clause``, for a message that goes on after
    the quote ("...: {reason}; fix ..."), a final full stop is dropped (an ellipsis is kept).

    Example:
        >>> short_error(RuntimeError("Error(s) in loading state_dict:\n\tMissing key(s): 'bias'. "))
        "Error(s) in loading state_dict: Missing key(s): 'bias'."
        >>> short_error(RuntimeError("shape '[7]' is invalid for input of size 6\n"
        ...     "Exception raised from infer_size_impl at InferSize.h:99 (most recent call first):\n"
        ...     "C++ CapturedTraceback:\n#4 c10::Error::Error(...) from libc10.so"))
        "shape '[7]' is invalid for input of size 6"
    """
    text = _ANSI.sub("", str(exc))
    head, summary, rest = text.partition("## Exception summary")
    if summary:
        causes = [line.split(">: ", 1)[-1] for line in rest.splitlines() if line.startswith("<class ")]
        text = head.split(". ")[0] + (f": {causes[0]}" if causes else "")
    text = " ".join(_without_frames(text).split()) or type(exc).__name__
    if len(text) <= SHORT_CHARS:
        return text[:-1] if clause and text.endswith(".") and not text.endswith("..") else text
    sentences = text.split(". ")
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 2 + len(sentence) > SHORT_CHARS - 4:
            break
        kept += ". " + sentence
    return kept[: SHORT_CHARS - 4] + " ..."


def _without_frames(text: str) -> str:
    """``text`` less its stacks: from PyTorch's C++ frames to the end, and each quoted traceback's
    header and frames (its last line, the exception and its reason, is kept), and the Python frames
    pybind11 lists after an "At:" line. A line that only repeats the reason of the line before it
    (TorchScript quotes the C++ error's text twice) goes too, and so does an exception's type said
    twice over ("RuntimeError: RuntimeError: ...")."""
    kept: list[str] = []
    frames = at = False
    for line in text.splitlines():
        if _CPP_FRAMES.match(line):
            break
        if _AT.match(line) or (at and (_AT_FRAME.match(line) or not line.strip())):
            at = True
            continue
        at = False
        if _TRACEBACK.match(line):
            frames = True
        elif frames and _RAISED.match(line):
            frames = False
        if not frames and not (kept and line.strip() and kept[-1].endswith(": " + line.strip())):
            kept.append(_TWICE.sub(r"\1: ", line))
    return "\n".join(kept)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"  # unreachable


def memory_available() -> int:
    """Bytes of memory this process could still get (MemAvailable; total RAM where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_fits(nbytes: int, what: str, fix: str = "use a smaller network or input") -> None:
    """Refuse, before allocating, ``nbytes`` that would not fit in the memory available now; ``fix``
    ends the message (what the user can do about this allocation)."""
    free = memory_available()
    if nbytes > free:
        raise CnnkitError(
            f"{what} needs {human_bytes(nbytes)}, more than the {human_bytes(free)} of memory available; {fix}"
        )


# How far a compressed file may claim to inflate. Deflate inflates zeros about 1,030 times (bzip2 and
# LZMA far more); real weights, series and images compress 1.1 to 5 times, and Keras stores a .keras
# file's members uncompressed. Above RATIO_FLOOR, a declared size more than MAX_RATIO times the bytes
# stored is a bomb or a damaged header, refused before anything is inflated (Keras' own loader uses the
# same ratio). Both are read when a check runs, so a test can lower them.
MAX_RATIO = 100
RATIO_FLOOR = 64 << 20  # up to this, a member may inflate any amount: zeros (a blank array) do, in under a second


def too_compressed(declared: int, stored: int) -> bool:
    """Whether ``declared`` bytes inflated from ``stored`` bytes is more than real data gives: above
    :data:`RATIO_FLOOR`, more than :data:`MAX_RATIO` times what is stored."""
    return declared > max(RATIO_FLOOR, MAX_RATIO * stored)


def zip_methods() -> tuple[int, ...]:
    """The compression methods Python's ``zipfile`` inflates here: stored and deflate, and bzip2
    and LZMA where Python was built with them (numbers as a zip header gives them)."""
    import importlib.util
    import zipfile

    optional = ((zipfile.ZIP_DEFLATED, "zlib"), (zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma"))
    return (zipfile.ZIP_STORED, *(m for m, module in optional if importlib.util.find_spec(module)))


def _method_name(method: int) -> str | None:
    """A zip compression method's name (``"deflate"``; 99 is WinZip's AES encryption), or None."""
    import zipfile

    return {99: "AES encryption"}.get(method) or zipfile.compressor_names.get(method)


def check_unzip(zf, names, fix: str, source=None, most=None, methods=None) -> None:
    """Refuse, before anything is inflated, members of the zip ``zf`` that cannot be read or whose
    declared sizes no real file has; ``fix`` ends the message (what the user can do).

    A member that is encrypted, or compressed with a method the reader does not inflate (``methods``,
    by default :func:`zip_methods`; ``torch.load`` reads stored and deflate only), is refused by
    name: ``zipfile`` itself would raise a RuntimeError or a NotImplementedError while reading it.
    Each member named, and their total, must pass :func:`too_compressed` against the bytes it
    stores, counted as at most the archive's size (a central directory may lie about the compressed
    size too). ``most``, given a member's ``ZipInfo``, returns ``(bytes, what they are)``: the most
    its content can need, or ``None``; it is called only for a member above :data:`RATIO_FLOOR` (it
    may cost a shapes-only build). Inflating stops at the declared size where the member is read by
    :func:`unzip` or in bounded reads (``zipfile``'s ``read()`` of a whole member inflates all the
    stream holds first), and ``torch.load`` stops there itself.

    Raises:
        CnnkitError: one line naming the file, the member, and ``fix``: with its encryption, its
            compression method, or its declared and stored sizes.
    """
    source = source or getattr(zf, "filename", None) or "the zip archive"
    try:
        held = os.fstat(zf.fp.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # an archive in memory: its own sizes are all there is
        held = None
    infos = [zf.getinfo(name) for name in names]
    methods = zip_methods() if methods is None else tuple(methods)
    for info in infos:
        if info.flag_bits & 0x1:  # the header's "encrypted" bit: ZipCrypto, or AES with method 99
            raise CnnkitError(
                f"{source}: its member {info.filename} is encrypted (the archive has a password), and cnnkit "
                f"reads no encrypted file; {fix}"
            )
        if info.compress_type not in methods:
            known = [_method_name(m) or f"method {m}" for m in methods]
            known = ", ".join(known[:-1]) + " or " + known[-1] if len(known) > 1 else known[0]
            name = _method_name(info.compress_type)
            method = f"{name} (zip method {info.compress_type})" if name else f"zip method {info.compress_type}"
            raise CnnkitError(
                f"{source}: its member {info.filename} is compressed with {method}, which this reader cannot "
                f"inflate (it reads {known}); {fix}"
            )
        declared = info.file_size
        stored = info.compress_size if held is None else min(info.compress_size, held)
        if too_compressed(declared, stored):
            raise CnnkitError(
                f"{source}: its member {info.filename} declares {human_bytes(declared)} inflated from "
                f"{human_bytes(stored)} ({declared / max(stored, 1):,.0f} times; real data compresses a few "
                f"times at most): a zip bomb or a damaged file; {fix}"
            )
        bound = most(info) if most is not None and declared > RATIO_FLOOR else None
        if bound is not None and declared > bound[0]:
            raise CnnkitError(
                f"{source}: its member {info.filename} declares {human_bytes(declared)} inflated from "
                f"{human_bytes(stored)}, more than the {human_bytes(bound[0])} {bound[1]}: a zip bomb or a "
                f"damaged file; {fix}"
            )
    total = sum(info.file_size for info in infos)
    if len(infos) > 1 and held is not None and too_compressed(total, held):
        raise CnnkitError(
            f"{source}: its {len(infos)} members declare {human_bytes(total)} together, inflated from the "
            f"file's {human_bytes(held)} ({total / max(held, 1):,.0f} times; real data compresses a few "
            f"times at most): a zip bomb or a damaged file; {fix}"
        )


def unzip(zf, name: str, fix: str, source=None, most=None) -> bytes:
    """The bytes of member ``name`` of the zip ``zf``, checked by :func:`check_unzip` first and
    inflated no further than the size it declares (memory: that size, once).

    Raises:
        CnnkitError: from :func:`check_unzip`.
        zipfile.BadZipFile: the member inflates to other bytes than it declares (its CRC does not
            match); the caller words it as a damaged file, with the other errors of its reads.
    """
    check_unzip(zf, [name], fix, source, most)
    size = zf.getinfo(name).file_size
    with zf.open(name) as f:
        data = f.read(size)  # a bounded read: zipfile inflates at most this much, then checks the CRC
        if len(data) < size or f.read(1):
            raise EOFError(f"{name} inflates to other than the {size:,} bytes it declares")
    return data


class DatasetReader:
    """Reads the datasets of one HDF5 file (h5py) under the rule :func:`check_unzip` applies to a zip
    member: HDF5's own filters (gzip, LZF, szip) inflate as deflate does, so a few kilobytes can
    declare gigabytes of zeros, which h5py inflates whole when the dataset is read.

    Before a dataset is read, the bytes its shape and type declare (``size * dtype.itemsize``: an
    array type's elements count whole) must pass :func:`too_compressed` against the bytes it stores
    (``get_storage_size``), counted as at most the file's (a chunk index may lie), and so must the
    bytes of every dataset read so far, together, against the file's bytes: one compressed dataset
    read many times (through hard links, or a name listed again) is refused as a bomb is.

    Args:
        source: the file, as messages name it.
        held: the bytes of the HDF5 file (on disk, or unpacked from a zip).
        fix: what the user can do; it ends a message.

    Example:
        >>> import h5py, io, numpy as np
        >>> with h5py.File(io.BytesIO(), "w") as f:
        ...     x = f.create_dataset("x", data=np.arange(6.0), compression="gzip")
        ...     DatasetReader("m.h5", 4096, "save it again").read(x).shape
        (6,)
    """

    def __init__(self, source, held: int, fix: str) -> None:
        self.source, self.held, self.fix = source, int(held), fix
        self.declared = 0  # the bytes of every dataset read so far

    def read(self, ds, name: str | None = None):
        """The data of the h5py dataset ``ds`` (``ds[()]``), read once the checks pass; ``name`` is
        how messages call it (default: its path in the file).

        Raises:
            CnnkitError: one line naming the file, the dataset, its declared and stored bytes (or the
                total read and the file's bytes), and the fix; nothing of it was read.
        """
        name = name or ds.name
        declared = int(ds.size or 0) * ds.dtype.itemsize
        stored = min(int(ds.id.get_storage_size()), self.held)
        if too_compressed(declared, stored):
            raise CnnkitError(
                f"{self.source}: its HDF5 dataset {name} declares {human_bytes(declared)} inflated from "
                f"{human_bytes(stored)} ({declared / max(stored, 1):,.0f} times; real data compresses a few "
                f"times at most): a compression bomb or a damaged file; {self.fix}"
            )
        self.declared += declared
        if too_compressed(self.declared, self.held):
            raise CnnkitError(
                f"{self.source}: its HDF5 datasets, up to {name}, declare {human_bytes(self.declared)} together, "
                f"inflated from the file's {human_bytes(self.held)} ({self.declared / max(self.held, 1):,.0f} "
                f"times; real data compresses a few times at most): a compression bomb (an array read many "
                f"times) or a damaged file; {self.fix}"
            )
        return ds[()]


def plain_int(text: str, digits: int = 18) -> int | None:
    """``text`` (surrounding spaces aside) as a non-negative integer where it is 1 to ``digits`` ASCII
    digits, else None. ``str.isdigit`` also takes "²" and "٣", which ``int`` refuses or reads as
    another number; an environment variable, a header or a file name is read by this instead."""
    text = text.strip()
    return int(text) if re.fullmatch(rf"[0-9]{{1,{digits}}}", text) else None


def brief(value, n: int = 60) -> str:
    """A user's value for a message, on one line and never longer than ``n`` characters: a string as
    it is, anything else as its ``repr`` (pass ``repr(text)`` to show a string's quotes), an exception
    as its text. A value sent to a server or typed into a file can be any length (a 400-digit number,
    a 200 KB name), and no message quotes it whole.

    Example:
        >>> brief(10**80, 20)
        '10000000000000000...'
    """
    text = str(value) if isinstance(value, (str, BaseException)) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def out_of_memory(what: str, nbytes: int | None = None) -> CnnkitError:
    """The error for a failed allocation (``MemoryError`` or the allocator's RuntimeError)."""
    need = (
        f" ({human_bytes(nbytes)} were needed, {human_bytes(memory_available())} are available)"
        if nbytes
        else f" ({human_bytes(memory_available())} available)"
    )
    return CnnkitError(f"out of memory while {what}{need}; use a smaller batch, input or network")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))
    )


def disk_full(path, nbytes: int | None = None) -> CnnkitError:
    """The error for ENOSPC/EDQUOT while writing ``path`` (the previous file is left as it was)."""
    need = f"{human_bytes(nbytes)} were to be written" if nbytes else "the file did not fit"
    return CnnkitError(
        f"disk full writing {path}: {need}; the previous version is kept: free some space or write elsewhere (--out)"
    )


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or during (a writer's own error wrapping
    the OSError), is ENOSPC or EDQUOT."""
    for _ in range(8):  # a chain of causes; bounded, as a chain may loop
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


NAME_MAX = 255  # the most bytes of a file name on the file systems cnnkit runs on (ext4, XFS, APFS, NTFS)


def name_too_long(path) -> CnnkitError:
    """The error for ENAMETOOLONG: ``path`` (shortened to a readable length) with the part the file
    system refuses, a name over its 255 bytes or a path over its 4,096."""
    text = os.fsdecode(path) if path else "a path"
    shown = text if len(text) <= 80 else f"{text[:56]}...{text[-16:]} ({len(text):,} characters)"
    longest = max(len(part.encode(errors="surrogateescape")) for part in text.split(os.sep))
    if longest > NAME_MAX:
        what = f"a name in it is {longest:,} bytes long, more than a file system allows ({NAME_MAX})"
    else:
        what = f"it is {len(text.encode(errors='surrogateescape')):,} bytes long, more than a path may be"
    return CnnkitError(f"{shown}: {what}; give a shorter path")


TEMP_NAME_BYTES = 100  # the most bytes of a file's name its temporary file's name repeats


def temp_prefix(path) -> str:
    """The start of the name of the temporary file written beside ``path`` before it is renamed into
    place: ``.<name>.``, the name cut to :data:`TEMP_NAME_BYTES` bytes, so that a name near the file
    system's 255 bytes still leaves room for what ``mkstemp`` adds."""
    from pathlib import Path

    name = Path(path).name.encode(errors="surrogateescape")[:TEMP_NAME_BYTES]
    return f".{name.decode(errors='ignore')}."


def is_name_too_long(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG


def gone_from_split(paths: list, what: str = "image") -> CnnkitError:
    """The error for images (or another ``what``: clips) a run's split.json names that are no longer
    in the data folder."""
    more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
    return CnnkitError(
        f"no {what} {paths[0]}{more}; the run's split.json names it: put it back, or train a new run on the folder as it is"
    )


def not_a_file(path) -> None:
    """Refuse a path that exists and is neither a regular file nor a folder (a named pipe, a socket,
    a device): reading one can block forever.

    Raises:
        CnnkitError: naming the path.
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, TypeError, ValueError):
        return  # absent or not a path: the reader says so in its own words
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CnnkitError(f"{path} is not a regular file (a pipe, socket or device); give a file saved on disk")


IN_RUN = "this command writes into the run folder: make room for it there"  # the fix where no flag chose the path


def choose_another(option: str | None) -> str:
    """The fix for an output path that cannot be written: choose another value of ``option``, the
    flag that chose it; ``None`` where the command writes into the run it reads (``cnnkit plot``)."""
    return f"choose another {option}" if option else IN_RUN


def output_folder(path, option: str | None = "--out-dir"):
    """Create the folder a command writes into (or a file's folder), before any work; returns its path.

    Raises:
        CnnkitError: it cannot be created (a file of that name, a file above it, no permission) or
            written; the message names ``option``, the flag that chose it (``None``: no flag did).
    """
    from pathlib import Path

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnkitError(
            f"cannot create the folder {path} ({exc.strerror or exc}); {choose_another(option)}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CnnkitError(f"cannot write in {path} (permission denied); {choose_another(option)}")
    return path


def check_not_input(targets, inputs, what: str = "input", option: str = "--out") -> None:
    """Refuse, before anything is written, an output that is one of the files the command reads: a
    PNG written over the photo it was computed from would lose the photo. Paths are compared as they
    resolve (a symbolic link to an input, ``./x.png`` for ``x.png``, count as the input).

    Args:
        targets: the files about to be written.
        inputs: the files the command reads.
        what: what the inputs are called in the message ("image", "input").
        option: the flag that chose the outputs, named in the fix ("--out", "--out-dir folder").

    Raises:
        CnnkitError: a target is one of ``inputs``: nothing was written.
    """
    from pathlib import Path

    given = {Path(p).resolve() for p in inputs}
    for target in targets:
        if Path(target).resolve() in given:
            raise CnnkitError(
                f"writing {target} would replace your {what} of that name; choose another {option} (nothing was written)"
            )


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, in the plural unless ``n`` is 1: ``counted(1, "class")`` is ``"1 class"``,
    ``counted(3, "image")`` ``"3 images"`` (nouns ending in s, x or sh take ``es``)."""
    if n == 1:
        return f"{n:,} {noun}"
    return f"{n:,} {noun}{'es' if noun.endswith(('s', 'x', 'sh')) else 's'}"


def check_folder(path, option: str = "--out"):
    """That the folder ``path`` exists or can be made, and written, without making it (a refused
    command leaves no empty folder behind): its nearest existing ancestor is a writable folder.

    Raises:
        CnnkitError: a file stands where the folder or one above it would be, or no permission;
            the message names ``option``.
    """
    from pathlib import Path

    path = Path(path)
    found = path
    while not found.exists() and found != found.parent:
        found = found.parent
    if not found.is_dir():
        raise CnnkitError(f"cannot create the folder {path} ({found} is a file); choose another {option}")
    if not os.access(found, os.W_OK | os.X_OK):
        raise CnnkitError(f"cannot write in {found} (permission denied); choose another {option}")


def special_file(path) -> str | None:
    """What ``path`` is when it is a named pipe, a socket or a device ("a named pipe", ...), which
    writing a file there would replace (or block on); None for a regular file, a folder or nothing."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device")):
        if test(mode):
            return name
    return "a device" if stat.S_ISBLK(mode) else None


def as_new_file(path) -> None:
    """Give a temporary file the mode ``open()`` gives a new file (0o666 less the umask), before it
    is renamed over its target: ``mkstemp`` makes it the owner's alone. Every file cnnkit writes
    (run folders, figures, exports) thus has the permissions the user's umask asks for."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def nested_deeper_than(obj, limit: int) -> bool:
    """Whether the lists and dicts of ``obj`` (a parsed JSON or YAML document) nest more than ``limit``
    deep (``[[1]]`` nests 2 deep), walked without recursion: a crafted file nested hundreds deep would
    exhaust Python's stack in any reader that recurses once per level (copying it, writing it back).

    Example:
        >>> nested_deeper_than({"a": [[1]]}, 2), nested_deeper_than({"a": [[1]]}, 3)
        (True, False)
    """
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False
