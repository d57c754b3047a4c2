"""Face-identity data (`dataset=identities`): a folder per identity or insightface's RecordIO
release. `task=pretrain` reads it through `scn.data.identities.load_identities`, which also builds the
verification pairs; this reader gives the other tools (inspect, predict, features) the same images:
train = the training identities, test = the verification images, classes = every identity kept
(training identities first, then the held-out ones).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from scn.data.sources import DatasetFiles


def read(dcfg: DictConfig, root: Path) -> DatasetFiles:
    from scn.data.identities import read_identity_files

    files, *_ = read_identity_files(dcfg, root)
    return files
