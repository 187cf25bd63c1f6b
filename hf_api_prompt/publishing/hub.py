"""Publishing to the Hugging Face Hub: fail fast, retry transient errors, tag last.

Order of a push (:meth:`HubPublisher.publish`):

1. ``Dataset.push_to_hub(config_name=variant)``: the data, as its own config;
2. one commit with the card, ``api_variants.json`` and the example picture, based
   on the data commit (``parent_commit``), so a concurrent change is noticed;
3. only then the tag ``{variant}-v{version}`` on that commit.

An evaluation that pins ``revision=tag`` therefore never sees a half-published
variant: if any step fails, no tag exists, and running the command again
publishes the variant whole. Everything that can stop a push (no token, a
read-only token, a fine-grained token without write access, a namespace the user
cannot write, an existing tag) is checked by :meth:`HubPublisher.preflight`
before anything is computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Dict, Iterable, Optional

from .build import BuiltVariant
from .card import check_card, render_card
from .retry import RetryPolicy, status_of
from .variants import VARIANTS_FILE, VariantIndex, variant_tag

logger = logging.getLogger(__name__)

README = "README.md"
REPO_TYPE = "dataset"


class PublishError(RuntimeError):
    """A push that cannot start, or did not finish; the message says why and what to do."""


def _write_permission(whoami: dict, namespace: str, repo_id: str) -> Optional[str]:
    """``None`` if the token may write ``repo_id``, else the reason it may not."""
    token = (whoami.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    user = whoami.get("name")
    orgs = {org.get("name"): org for org in whoami.get("orgs") or []}
    if namespace != user and namespace not in orgs:
        return f"{user!r} is neither {namespace!r} nor a member of organization {namespace!r} (orgs: {sorted(orgs)})"
    if namespace in orgs and orgs[namespace].get("roleInOrg") in ("read", "contributor"):
        return f"{user!r} has the role {orgs[namespace].get('roleInOrg')!r} in {namespace!r}, which cannot create or write repos"
    if role == "read":
        return "the token is read-only (role 'read'); create a token with write access at https://huggingface.co/settings/tokens"
    if role == "fineGrained":
        scoped = ((token.get("fineGrained") or {}).get("scoped")) or []
        for entry in scoped:
            entity = entry.get("entity") or {}
            covers = (entity.get("type") in ("user", "org") and entity.get("name") == namespace) or (
                entity.get("type") == "dataset" and entity.get("name") == repo_id
            )
            if covers and "repo.write" in (entry.get("permissions") or []):
                return None
        return f"the fine-grained token has no 'repo.write' permission on {namespace!r} or on dataset {repo_id!r}"
    return None


class HubPublisher:
    """Pushes variants to one Hub dataset repo.

    Args:
        repo_id: ``namespace/name`` (a bare name is put in the token owner's namespace).
        token: a token; default: ``HF_TOKEN`` or the saved login.
        private: visibility of the repo if it has to be created.
        retry: how transient errors are retried.
    """

    def __init__(self, repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = None,
                 retry: Optional[RetryPolicy] = None):
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.token = token
        self.private = private
        self.retry = retry or RetryPolicy()
        self.api = HfApi(token=token)
        self._checked = False

    # ------------------------------------------------------------------ checks
    def _resolved_token(self) -> str:
        from huggingface_hub import get_token

        token = self.token or get_token()
        if not token:
            raise PublishError(
                "no Hugging Face token: set HF_TOKEN or run `hf auth login` with a token that can write "
                f"to {self.repo_id!r} (nothing was computed)"
            )
        return token

    def preflight(self, config_name: Optional[str] = None, tags: Iterable[str] = (), create: bool = True) -> dict:
        """Check everything that can stop a push, before any compute; create the repo if needed.

        Args:
            config_name: the variant about to be pushed (its tag must not exist yet).
            tags: further tags that must not exist yet.
            create: create the repo if it does not exist (else that is an error).

        Returns:
            the ``whoami`` answer.

        Raises:
            PublishError: with the reason, before anything is computed or uploaded.
        """
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        token = self._resolved_token()
        self.token = token
        self.api = type(self.api)(token=token, endpoint=self.api.endpoint)
        try:
            whoami = self.retry.call("whoami", lambda: self.api.whoami(token=token))
        except HfHubHTTPError as error:
            if status_of(error) == 401:
                raise PublishError(f"the Hugging Face token is invalid or expired ({error})") from None
            raise PublishError(f"could not check the token with the Hub: {error}") from error
        if "/" not in self.repo_id:
            self.repo_id = f"{whoami['name']}/{self.repo_id}"
        namespace = self.repo_id.split("/", 1)[0]
        reason = _write_permission(whoami, namespace, self.repo_id)
        if reason:
            raise PublishError(f"cannot push to {self.repo_id!r}: {reason} (nothing was computed)")
        try:
            self.retry.call("repo info", lambda: self.api.repo_info(self.repo_id, repo_type=REPO_TYPE, token=token))
            exists = True
        except RepositoryNotFoundError:
            exists = False
        if exists:
            self._check_write_access(token)
        elif not create:
            raise PublishError(f"dataset repo {self.repo_id!r} does not exist")
        else:
            try:
                self.retry.call(
                    "create repo",
                    lambda: self.api.create_repo(self.repo_id, repo_type=REPO_TYPE, private=self.private, exist_ok=True, token=token),
                )
            except HfHubHTTPError as error:
                raise PublishError(f"cannot create dataset repo {self.repo_id!r}: {error}") from error
            logger.info("created dataset repo %s", self.repo_id)
        wanted = set(tags) | ({variant_tag(config_name)} if config_name else set())
        existing = {ref.name for ref in self._refs().tags}
        taken = sorted(wanted & existing)
        if taken:
            raise PublishError(
                f"{self.repo_id!r} already has tag(s) {taken}: this variant is published at this library version. "
                "Tags are never moved; delete the tag first to republish (nothing was computed)"
            )
        self._checked = True
        return whoami

    def _check_write_access(self, token: str):
        """Ask the Hub whether the token may write this existing repo (if the client can ask)."""
        import inspect

        from huggingface_hub.errors import HfHubHTTPError

        auth_check = getattr(self.api, "auth_check", None)
        if auth_check is None or "write" not in inspect.signature(auth_check).parameters:
            return
        try:
            self.retry.call("auth check", lambda: auth_check(self.repo_id, repo_type=REPO_TYPE, token=token, write=True))
        except HfHubHTTPError as error:
            raise PublishError(f"the token cannot write to {self.repo_id!r}: {error} (nothing was computed)") from error

    def _refs(self):
        return self.retry.call("list refs", lambda: self.api.list_repo_refs(self.repo_id, repo_type=REPO_TYPE))

    # ---------------------------------------------------------------- reading
    def read_text(self, filename: str, revision: str) -> Optional[str]:
        """A file of the repo at ``revision``, or ``None`` if it does not exist there."""
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = self.retry.call(
                f"download {filename}",
                lambda: self.api.hf_hub_download(self.repo_id, filename, repo_type=REPO_TYPE, revision=revision),
            )
        except EntryNotFoundError:
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def head(self, revision: str = "main") -> str:
        return self.retry.call("repo info", lambda: self.api.repo_info(self.repo_id, repo_type=REPO_TYPE, revision=revision)).sha

    def index(self, revision: str = "main") -> VariantIndex:
        return VariantIndex.from_json(self.read_text(VARIANTS_FILE, revision))

    # -------------------------------------------------------------- publishing
    def publish(self, built: BuiltVariant) -> dict:
        """Push ``built``: data, then card and picture, then the tag (see the module docstring)."""
        if not self._checked:
            self.preflight(built.config_name)
        record = dataclasses.replace(built.record, tag=variant_tag(built.config_name, built.record.library_version))
        step = "pushing the data"
        with _as_publish_error(lambda error: (
            f"publishing {record.config_name} to {self.repo_id!r} failed while {step}: {type(error).__name__}: {error}. "
            f"Tag {record.tag!r} was not created, so no evaluation pinned to it can see a partial variant; "
            "run the same command again to publish it whole"
        )):
            data_commit = self.retry.call(
                "push data",
                lambda: built.dataset.push_to_hub(
                    self.repo_id,
                    config_name=record.config_name,
                    split=record.split,
                    token=self.token,
                    commit_message=f"Add API variant {record.config_name}: data",
                ),
            )
            logger.info("pushed %d rows of %s (commit %s)", record.num_rows, record.config_name, data_commit.oid)
            step = "committing the card, picture and api_variants.json"
            extra = {record.preview: _png_bytes(built.preview)} if built.preview is not None and record.preview else {}
            card_commit = self._commit_card(record, extra, data_commit.oid,
                                            f"Add API variant {record.config_name}: card, {VARIANTS_FILE}, picture")
            step = f"creating the tag {record.tag}"
            self._tag(record, card_commit)
        return {"repo_id": self.repo_id, "config_name": record.config_name, "revision": record.tag,
                "commit": card_commit, "num_rows": record.num_rows}

    def _commit_card(self, record, extra_files: Dict[str, bytes], base: str, message: str, max_conflicts: int = 5) -> str:
        """Commit card + ``api_variants.json`` (+ ``extra_files``) on top of ``base``; returns the commit sha.

        ``record`` (or ``None``: re-render only) is added to the index read at ``base``.
        """
        from huggingface_hub import CommitOperationAdd, DatasetCard
        from huggingface_hub.errors import HfHubHTTPError

        for _ in range(max_conflicts):
            readme = self.read_text(README, base)
            existing = DatasetCard(readme) if readme is not None else None
            index = self.index(base)
            if record is not None:
                index = index.upsert(record)
            card = render_card(index, load_path=self.repo_id, is_hub=True, existing_card=existing)
            files = self.retry.call("list files", lambda: self.api.list_repo_files(self.repo_id, repo_type=REPO_TYPE, revision=base))
            problems = check_card(card, index, set(files) | set(extra_files))
            if problems:
                raise PublishError(f"the card for {self.repo_id!r} does not match its files: {'; '.join(problems)}")
            operations = [CommitOperationAdd(path, content) for path, content in extra_files.items()]
            operations += [
                CommitOperationAdd(VARIANTS_FILE, index.to_json().encode()),
                CommitOperationAdd(README, str(card).encode()),
            ]
            try:
                commit = self.retry.call(
                    "commit card",
                    lambda: self.api.create_commit(self.repo_id, operations=_fresh(operations), commit_message=message,
                                                   repo_type=REPO_TYPE, parent_commit=base),
                )
                return commit.oid
            except HfHubHTTPError as error:
                if status_of(error) not in (409, 412):
                    raise
                logger.warning("main moved while committing the card (%s); rebasing on the new head", status_of(error))
                base = self.head()
        raise PublishError(f"{self.repo_id!r} kept changing while the card was committed; run the command again")

    def rewrite_card(self) -> str:
        """Re-render the card on ``main`` from its ``api_variants.json`` (tags are not touched); returns the commit."""
        if not self._checked:
            self.preflight(create=False)
        if len(self.index()) == 0:
            raise PublishError(f"{self.repo_id!r} has no {VARIANTS_FILE}: nothing to render")
        return self._commit_card(None, {}, self.head(), "Re-render the dataset card from api_variants.json")

    def _tag(self, record, commit: str):
        """Create ``record.tag`` at ``commit``; an existing tag at the same commit is fine (a rerun)."""
        from huggingface_hub.errors import HfHubHTTPError

        tag, message = record.tag, f"API variant {record.config_name}, hf_api_prompt {record.library_version}"

        try:
            self.retry.call("create tag", lambda: self.api.create_tag(self.repo_id, tag=tag, revision=commit,
                                                                     tag_message=message, repo_type=REPO_TYPE))
        except HfHubHTTPError as error:
            if status_of(error) != 409:
                raise
            target = {ref.name: ref.target_commit for ref in self._refs().tags}.get(tag)
            if target != commit:
                raise PublishError(f"tag {tag!r} already exists on {self.repo_id!r} at {target}, not at {commit}") from error
        logger.info("tagged %s at %s", tag, commit)


@contextlib.contextmanager
def _as_publish_error(describe):
    """Let a ``PublishError`` through; turn any other failure into one with ``describe(error)`` as its message."""
    try:
        yield
    except PublishError:
        raise
    except Exception as error:
        raise PublishError(describe(error)) from error


def _png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload_folder(folder, repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = None,
                  retry: Optional[RetryPolicy] = None) -> dict:
    """Upload a local variant folder (see ``layout``) to the Hub in one commit, then tag its variants.

    Variants already in the repo are kept: ``api_variants.json`` and the card's
    ``configs``/``dataset_info`` are merged, and the card is re-rendered from the
    merged records.

    Returns:
        ``{"repo_id", "commit", "config_names", "revisions"}``.
    """
    from pathlib import Path

    from .layout import folder_lock

    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder} holds no variants (it is not a folder)")
    with folder_lock(folder):  # no writer changes the folder while it is read and uploaded
        return _upload_locked(folder, repo_id, token=token, private=private, retry=retry)


def _upload_locked(folder, repo_id: str, *, token, private, retry) -> dict:
    from .layout import list_files, read_card, read_index

    local = read_index(folder)
    if len(local) == 0:
        raise PublishError(f"{folder} holds no variants ({VARIANTS_FILE} is missing or empty)")
    local = VariantIndex({name: dataclasses.replace(r, tag=variant_tag(name, r.library_version)) for name, r in local.records.items()})
    publisher = HubPublisher(repo_id, token=token, private=private, retry=retry)
    publisher.preflight(tags=[r.tag for r in local.records.values()])
    local_card = read_card(folder)
    local_files = [f for f in list_files(folder) if f not in (README, VARIANTS_FILE)]
    with _as_publish_error(lambda error: (
        f"uploading {folder} to {publisher.repo_id!r} failed: {type(error).__name__}: {error}. Variants whose tag "
        "was not created are invisible to pinned evaluations; run the same command again"
    )):
        commit = _upload_commit(publisher, folder, local, local_card, local_files)
        for name in local.names():
            publisher._tag(local[name], commit)
    return {"repo_id": publisher.repo_id, "commit": commit, "config_names": local.names(),
            "revisions": [local[n].tag for n in local.names()]}


def _upload_commit(publisher: "HubPublisher", folder, local: VariantIndex, local_card, local_files) -> str:
    """One commit: the folder's data and pictures, merged ``api_variants.json`` and card; returns its sha."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, DatasetCardData
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = publisher.repo_id
    for _ in range(5):
        base = publisher.head()
        remote_files = publisher.retry.call("list files", lambda: publisher.api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=base))
        readme = publisher.read_text(README, base)
        merged_data = DatasetCard(readme).data.to_dict() if readme is not None else {}
        local_data = local_card.data.to_dict() if local_card is not None else {}
        merged_data["configs"] = _merge_by_config(merged_data.get("configs"), local_data.get("configs"))
        merged_data["dataset_info"] = _merge_by_config(merged_data.get("dataset_info"), local_data.get("dataset_info"))
        existing = DatasetCard("---\n" + DatasetCardData(**merged_data).to_yaml() + "\n---\n")
        index = publisher.index(base).merged(local)
        card = render_card(index, load_path=publisher.repo_id, is_hub=True, existing_card=existing)
        problems = check_card(card, index, set(remote_files) | set(local_files))
        if problems:
            raise PublishError(f"the merged card for {repo_id!r} does not match its files: {'; '.join(problems)}")
        stale = [f for f in remote_files if f not in local_files and any(
            f.startswith(f"{r.config_name}/{r.split}-") for r in local.records.values())]
        operations = [CommitOperationAdd(path, str(folder / path)) for path in local_files]
        operations += [CommitOperationDelete(path) for path in stale]
        operations += [CommitOperationAdd(VARIANTS_FILE, index.to_json().encode()), CommitOperationAdd(README, str(card).encode())]
        try:
            return publisher.retry.call(
                "upload folder",
                lambda: publisher.api.create_commit(repo_id, operations=_fresh(operations),
                                                    commit_message=f"Add API variants {', '.join(local.names())}",
                                                    repo_type=REPO_TYPE, parent_commit=base),
            ).oid
        except HfHubHTTPError as error:
            if status_of(error) not in (409, 412):
                raise
    raise PublishError(f"{repo_id!r} kept changing during the upload; run the command again")


def _fresh(operations):
    """Fresh copies of commit operations (an addition that was sent once cannot be reused in a retry)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    return [op if isinstance(op, CommitOperationDelete) else CommitOperationAdd(op.path_in_repo, op.path_or_fileobj)
            for op in operations]


def _merge_by_config(base, update) -> list:
    """Merge two YAML ``configs``/``dataset_info`` values (a dict or a list of dicts) by ``config_name``."""
    def as_list(value):
        if value is None:
            return []
        return [value] if isinstance(value, dict) else list(value)

    merged = {item.get("config_name", "default"): item for item in as_list(base)}
    merged.update({item.get("config_name", "default"): item for item in as_list(update)})
    return [merged[name] for name in sorted(merged)]
