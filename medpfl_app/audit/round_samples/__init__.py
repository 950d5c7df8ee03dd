"""Site-local record of which training samples went into each round's update: a file that never leaves the site.

The site's training script (`medpfl_app.nvflare.site.client`) writes one record per round, before its update is
sent; the site's scorer component (`medpfl_app.nvflare.site.scorer`) reads it to score the server's
reconstructions of that update. The two may run in different processes (NVFlare's ``ClientAPIExecutor`` in
``in_process`` or ``external_process`` mode), so the record is a file both derive from the job and the site, in the
client's run folder of the job::

    <site workspace>/<job id>/medpfl/round_samples/round_<n>.json

The scorer knows that folder from NVFlare (``Workspace.get_run_dir(job_id)``); the training script finds it with
`find_client_run_dir` from where NVFlare runs it (the app folder ``<run dir>/app_<site>`` is the working folder of
an external process, the script lives in ``<run dir>/app_<site>/custom/`` in both modes, and an in-process script
runs in the client job process, whose working folder is the site workspace).

A record holds the job, site and round, the distinct positions (in the site's training list) of the samples the
round trained on, and how the training set was loaded (`TrainingSet`: data settings, label count, size and a
digest of the list), so that the scorer loads exactly the pixels training saw (`load_training_pool`) or says
why it cannot. Records are written atomically, owner-only (files 0600, folders 0700), and only the `KEEP_ROUNDS`
most recent rounds are kept. Nothing here imports NVFlare.

Beside it, the site records what it actually sent in each round (`SentUpdate`, written by the job's last client
result filter, `medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest`, after every other filter)::

    <site workspace>/<job id>/medpfl/sent_updates/round_<n>.json

the digest of the update as it left the site (`medpfl_app.audit.update_digest`), how many images it declared, and
the server identity that assigned the task. The scorer answers a score request only for an update recorded here
(matching round and digest), so no one can have it score anything but this site's own updates.

Reasons given by `RoundSamplesUnavailable` name no path, file or sample: the scorer may send them to the server.

The parts: ``records`` (`TrainingSet`, `RoundSamples`), ``round_files`` (writing and reading any round file),
``samples_file`` and ``sent_update`` (the two records' files), ``run_dir`` (`find_client_run_dir`) and
``training_pool`` (the training set's digest and `load_training_pool`); everything public is re-exported here.
"""

from medpfl_app.audit.round_samples.records import SCHEMA_VERSION, RoundSamples, TrainingSet
from medpfl_app.audit.round_samples.round_files import KEEP_ROUNDS, RECORD_FOLDER, SENT_FOLDER
from medpfl_app.audit.round_samples.run_dir import find_client_run_dir
from medpfl_app.audit.round_samples.samples_file import (
    read_round_samples,
    record_folder,
    record_path,
    recorded_rounds,
    write_round_samples,
)
from medpfl_app.audit.round_samples.sent_update import (
    SentUpdate,
    read_sent_update,
    sent_path,
    sent_rounds,
    write_sent_update,
)
from medpfl_app.audit.round_samples.training_pool import (
    TrainingPool,
    describe_training_set,
    load_training_pool,
    training_set_digest,
)
from medpfl_app.audit.round_samples.unavailable import RoundSamplesUnavailable

__all__ = [
    "KEEP_ROUNDS",
    "RECORD_FOLDER",
    "SCHEMA_VERSION",
    "SENT_FOLDER",
    "RoundSamples",
    "RoundSamplesUnavailable",
    "SentUpdate",
    "TrainingPool",
    "TrainingSet",
    "describe_training_set",
    "find_client_run_dir",
    "load_training_pool",
    "read_round_samples",
    "read_sent_update",
    "record_folder",
    "record_path",
    "recorded_rounds",
    "sent_path",
    "sent_rounds",
    "training_set_digest",
    "write_round_samples",
    "write_sent_update",
]
