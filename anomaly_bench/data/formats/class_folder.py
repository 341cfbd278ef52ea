"""``class_folder``: images in class folders at any depth (``root/<class>/...``,
``root/Training/notumor/...``, ``root/glioma/patient7/...``).

Card keys: ``classes: {healthy: [...], diseased: [...]}`` (folder names, case-insensitive; an image's class
is the deepest folder on its path named in ``classes``); ``ignore_unknown_classes`` (default false: a folder
holding images outside every listed class is an error naming it); ``roles_from_dirs`` (e.g.
``{Training: train, Testing: test}``: the dataset's own split, recorded in ``ds.roles``; whether the split
uses it is ``split.use_predefined_roles``); ``subject_regex`` (a pattern or a list, applied to the file name;
captured groups give the subject id, e.g. ``(person\\d+)_``; unmatched files are their own subject);
``extensions``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.format_tools import (
    build_from_files,
    compile_subject_patterns,
    limit_indices,
    subject_from_name,
    walk_files,
)
from anomaly_bench.data.image_io import IMAGE_EXTENSIONS
from anomaly_bench.data.records import PREDEFINED_ROLES

CARD_KEYS = {"ignore_unknown_classes", "roles_from_dirs", "subject_regex", "extensions"}


def relative_id(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` as a posix string (string slicing: pathlib is slow on 100k files)."""
    s, base = os.fspath(path), os.fspath(root).rstrip(os.sep) + os.sep
    return (s[len(base):] if s.startswith(base) else s).replace(os.sep, "/")


def scan_classes(card: dict[str, Any], root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
                 ) -> list[tuple[str, str, int, str]]:
    """``[(file path, class name, label, role)]`` for a class-folder tree, with the checks described above."""
    where = card.get("_source", "card")
    classes = card.get("classes") or {}
    healthy = [str(c) for c in classes.get("healthy") or []]
    diseased = [str(c) for c in classes.get("diseased") or []]
    if not healthy or not diseased:
        raise ConfigError(f"{where}: classes must list at least one healthy and one diseased class folder, "
                          f"e.g. classes: {{healthy: [normal], diseased: [pneumonia]}}")
    label_of = {c.lower(): (c, 0) for c in healthy} | {c.lower(): (c, 1) for c in diseased}
    role_dirs = {str(k).lower(): v for k, v in (card.get("roles_from_dirs") or {}).items()}
    bad_roles = sorted(set(role_dirs.values()) - set(PREDEFINED_ROLES) - {""})
    if bad_roles:
        raise ConfigError(f"{where}: roles_from_dirs maps to unknown role(s) {bad_roles}; allowed: "
                          f"{[r for r in PREDEFINED_ROLES if r]}")
    ignore_unknown = bool(card.get("ignore_unknown_classes", False))
    tree = walk_files(root, extensions)
    found: dict[str, int] = {c.lower(): 0 for c in label_of}
    class_dirs: dict[Path, str] = {}
    out: list[tuple[str, str, int, str]] = []
    unknown: list[tuple[Path, int]] = []

    def place(parts: tuple[str, ...]) -> tuple[str | None, str]:
        hit = [p.lower() for p in parts if p.lower() in label_of]
        return (hit[-1] if hit else None), next((role_dirs[p.lower()] for p in parts if p.lower() in role_dirs), "")

    check_links = _LinkCheck(root, place, where)
    for d, files in tree.items():
        parts = d.relative_to(root).parts
        check_links.folder(d, parts)
        check_links.files(files, place(parts))
        hit = [p.lower() for p in parts if p.lower() in label_of]
        if d != root and parts[-1].lower() in label_of:
            class_dirs[d] = parts[-1]
        if not files:
            continue
        if not hit:
            unknown.append((d, len(files)))
            continue
        cname, label = label_of[hit[-1]]
        found[hit[-1]] += len(files)
        role = next((role_dirs[p.lower()] for p in parts if p.lower() in role_dirs), "")
        out.extend((f, cname, label, role) for f in files)
    if unknown and not ignore_unknown:
        d, n = unknown[0]
        rel = d.relative_to(root).as_posix() or "."
        more = f" ({len(unknown) - 1} more such folder(s))" if len(unknown) > 1 else ""
        raise DataError(f"{d}: folder '{rel}' holds {n} image(s) but is in neither classes.healthy {healthy} nor "
                        f"classes.diseased {diseased}{more}; add the folder name to one of them in {where}, or "
                        f"set `ignore_unknown_classes: true` to leave its images out")
    with_images = {root}
    for d, files in tree.items():
        if files:
            with_images.update([d, *d.parents])
    for d, cname in class_dirs.items():
        if d not in with_images:
            raise DataError(f"{d}: class folder '{cname}' contains no image files ({', '.join(extensions)}); "
                            f"add images, remove the folder, or fix the class list in {where}")
    missing = [label_of[c][0] for c, n in found.items() if n == 0]
    if missing:
        raise DataError(f"{root}: class(es) {missing} listed in {where} have no images under the root; fix "
                        f"`classes` or the data folder")
    return out


class _LinkCheck:
    """A folder or file reached through a symbolic link must get the class and role its real place in the tree
    gives: else the same images would count under two classes or roles (or the real folder would be skipped as
    visited, its images taking the link's class), which is refused naming both paths."""

    def __init__(self, root: Path, place, where: str):
        self.real_root, self.place, self.where = os.path.realpath(root), place, where

    def _canonical(self, path: str | Path) -> tuple[str, ...] | None:
        real = os.path.realpath(path)
        if real != self.real_root and not real.startswith(self.real_root + os.sep):
            return None  # a link to data outside the root: reached only through the link
        return Path(os.path.relpath(real, self.real_root)).parts

    def _refuse(self, path: str | Path, real_parts: tuple[str, ...], what: str) -> None:
        real = Path(self.real_root, *real_parts)
        raise DataError(f"{path}: this {what} is a symbolic link to {real}, which is also in the data tree under "
                        f"another class or role folder, so its images would be labelled twice or wrongly; remove "
                        f"the link (or copy the images where they belong) and fix `classes`/`roles_from_dirs` in "
                        f"{self.where} if needed")

    def folder(self, d: Path, parts: tuple[str, ...]) -> None:
        canon = self._canonical(d)
        if canon is not None and canon != parts and self.place(canon) != self.place(parts):
            self._refuse(d, canon, "folder (or one above it)")

    def files(self, files: list[str], here: tuple[str | None, str]) -> None:
        for f in files:
            if os.path.islink(f):
                canon = self._canonical(f)
                if canon is not None and self.place(canon[:-1]) != here:
                    self._refuse(f, canon, "image file")


@register_format("class_folder")
def load_class_folder(card: dict[str, Any], root: Path):
    where = card.get("_source", "card")
    if not root.is_dir():
        raise DataError(f"{root}: the class_folder format needs a folder")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in card.get("extensions")
                 or IMAGE_EXTENSIONS)
    items = scan_classes(card, root, exts)
    keep = limit_indices([it[1] for it in items], card.get("limit_per_class"))
    items = [items[i] for i in keep]
    files = [it[0] for it in items]
    ids = [relative_id(f, root) for f in files]
    patterns = compile_subject_patterns(card.get("subject_regex"), where)
    subjects = None
    meta: dict[str, Any] = {}
    if patterns:
        subs = [subject_from_name(os.path.basename(f), patterns) for f in files]
        unmatched = [ids[i] for i, s in enumerate(subs) if s is None]
        subjects = [s if s is not None else ids[i] for i, s in enumerate(subs)]
        meta["subject_regex_unmatched"] = {"n": len(unmatched), "examples": unmatched[:10]}
    roles = [it[3] for it in items] if card.get("roles_from_dirs") else None
    return build_from_files(card, root, files, np.array([it[2] for it in items]), ids=ids, subjects=subjects,
                            roles=roles, classes=[it[1] for it in items], meta=meta)


load_class_folder.card_keys = CARD_KEYS
