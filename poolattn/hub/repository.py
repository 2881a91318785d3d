"""Publish trained poolattn models to the Hugging Face Hub: one repository folder per model, and its upload.

>>> repository_id("ORG/poolattn-smollm2", variant=5)
'ORG/poolattn-smollm2-v5'

A repository folder (`write_repository_folder`) holds exactly what is uploaded:

- the exported model: `config.json` (with `auto_map`), `configuration_poolattn.py`, `modeling_poolattn.py`,
  `model.safetensors`, the tokenizer files and `training_manifest.json`;
- the ONNX export `onnx/` when the model folder has one (`poolattn-export-onnx`, or `publish.py --onnx`);
- the sentence-transformers files: `modules.json` naming `PoolAttnTransformer` (`sentence_transformers_poolattn.py`,
  with `onnx_poolattn.py` for `backend="onnx"`),
  `sentence_bert_config.json` and `config_sentence_transformers.json` (the query prompt the model was trained with),
  so `SentenceTransformer(repo, trust_remote_code=True)` runs the pooling head instead of a silent mean pool;
- `README.md`, the model card (`model_card.build_model_card`) from the training manifest, the config and, when
  evaluation results exist, the MTEB scores (`model-index`) and Wilcoxon comparisons against the other variants.

The folder is written to a temp folder beside its destination, checked, and only then renamed over what is there
(`save_checked`): a folder that fails its check leaves an earlier one in place. `push_folder` uploads it with
`create_repo` + `upload_folder`, and on any failure raises `HubPushError` naming the kept folder, so nothing is lost.
`check_push_possible` refuses an upload that cannot work (offline mode, no token), and `check_repository_id` a
repository id the Hub refuses, before any work is spent on it.
"""

import logging
import re
import shutil
from pathlib import Path

from ..configuration_poolattn import variant_tag
from ..evaluation.results import results_root
from ..export import write_sentence_transformers_files
from ..files import atomic_save
from ..model_folder import ExportedModel
from .card_results import card_results
from .model_card import build_model_card
from .shipping import (
    PACKAGE_CODE,
    PACKAGE_DIR,
    check_loads,
    differing_code,
    local_paths,
    scrub_local_paths,
    shipped_files,
)

logger = logging.getLogger(__name__)


class HubPushError(RuntimeError):
    """An upload that cannot or did not happen; the message says why, what to do, and where a folder was kept."""


def repository_id(hub_model_id: str, *, variant: int | str | None, trained_name: str | None = None) -> str:
    """`ORG/NAME` -> `ORG/NAME-v<variant>` (`ORG/NAME-mean-causal` for a baseline design): one repository per design
    (unchanged for custom configs). An ablation arm keeps the arm its trained name gives after the variant, so it
    never takes its base variant's repository.

    >>> repository_id("ORG/m", variant=5, trained_name="poolattn/smollm2-135m-v5-weights-off")
    'ORG/m-v5-weights-off'
    >>> repository_id("ORG/m", variant=2, trained_name="poolattn/deepseek-coder-v2-lite-v2")
    'ORG/m-v2'
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_model_id or ""):
        raise ValueError(f"hub_model_id={hub_model_id!r} is not a Hub repository id; give one as ORG/NAME.")
    if variant is None:
        return check_repository_id(hub_model_id, hub_model_id)
    tag, trained = variant_tag(variant), (trained_name or "").split("/")[-1]
    # a design's trained name ends with its tag; an arm's goes on after it (a backbone's own `-v2-` is no arm's)
    arm = (
        trained[trained.rindex(f"-{tag}-") + len(tag) + 1 :]
        if not trained.endswith(f"-{tag}") and f"-{tag}-" in trained
        else ""
    )
    return check_repository_id(f"{hub_model_id}-{tag}{arm}", hub_model_id)


REPOSITORY_ID_RULES = (
    "ORG/NAME of ASCII letters, digits, '-', '_' and '.', each part at most 96 characters, not starting or ending "
    "with '-' or '.', without '--' or '..', not ending in '.git'"
)


def check_repository_id(repo_id: str, hub_model_id: str) -> str:
    """`repo_id` (derived from `--hub_model_id`) when the Hub accepts it (`huggingface_hub`'s `validate_repo_id`,
    and each part ASCII and at most 96 characters), else a `ValueError` naming the flag, what it gave and the rules.

    >>> check_repository_id("ORG/a..b-v5", "ORG/a..b")
    Traceback (most recent call last):
    ...
    ValueError: --hub_model_id 'ORG/a..b' gives the repository id 'ORG/a..b-v5', which is refused by the Hub (...
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        reason = None
    except HFValidationError as error:
        reason = str(error)
    if reason is None and not all(re.fullmatch(r"[A-Za-z0-9._-]{1,96}", part) for part in repo_id.split("/")):
        reason = "a part is not ASCII letters, digits, '-', '_' and '.', or longer than 96 characters"
    if reason is not None:
        what = "is" if repo_id == hub_model_id else f"gives the repository id {repo_id!r}, which is"
        raise ValueError(
            f"--hub_model_id {hub_model_id!r} {what} refused by the Hub ({reason}). A repository id is "
            f"{REPOSITORY_ID_RULES}, each variant's suffix (-v5) included in the NAME; give another --hub_model_id."
        )
    return repo_id


def check_push_possible(token: str | None = None) -> str:
    """The token an upload will use (`token`, else `HF_TOKEN` or the saved login); raises `HubPushError` when no
    upload can work: offline mode (`HF_HUB_OFFLINE=1`), or no token at all. Call it before spending work on a push."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise HubPushError(
            "HF_HUB_OFFLINE is set: a run with HF_HUB_OFFLINE=1 cannot upload; unset it, or write the "
            "repository folders only (train.py --hub_dry_run DIR, publish.py without --push) and push "
            "them later with publish.py --push."
        )
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubPushError("No Hugging Face token found: set HF_TOKEN, run `hf auth login`, or pass --hub_token.")
    return token


# ---------------------------------------------------------------------------------------------------------------------
# The repository folder
# ---------------------------------------------------------------------------------------------------------------------


def write_repository_folder(
    model,
    destination,
    *,
    repo_id: str,
    results=None,
    others: list[ExportedModel] = (),
    license: str | None = None,
    study_section: str | None = None,
    verify: bool = True,
) -> Path:
    """Write exactly what `push_folder` uploads to `destination`, atomically (temp folder, then rename).

    `model` is an `ExportedModel` or its folder; `results` the output folder of an evaluation run (optional);
    `others` are the variants published with it (their exact results are the card's comparisons); `study_section`
    the model's place in a study (`study.card_section`), Markdown for its card. What is shipped follows
    `shipping`: the allow-listed model files, the package's own code, no local paths; with `verify` the folder must
    load in a fresh process as its card says before it replaces `destination` (`shipping.check_loads`): a folder
    that fails leaves the one already at `destination` as it was.
    """
    model = model if isinstance(model, ExportedModel) else ExportedModel.read(model)
    save = repository_folder_writer(
        model, repo_id=repo_id, results=results, others=others, license=license, study_section=study_section
    )
    check = (lambda folders: check_loads(folders, [recorded_variant(model)])) if verify else (lambda folders: None)
    return save_checked([(save, Path(destination))], check)[0]


def repository_folder_writer(
    model: ExportedModel, *, repo_id: str, results, others, license: str | None, study_section: str | None
):
    """`save(folder)`: writes `model`'s repository folder (see `write_repository_folder`) into `folder`. The card
    and its results are made now, so what they warn of is said once, before any file is written."""
    shipped, left_out = shipped_files(model.folder)
    if left_out:
        logger.warning("%s: left out of the repository folder (not model files): %s", repo_id, ", ".join(left_out))
    if changed := differing_code(model.folder):
        logger.warning(
            "%s: %s in %s differ(s) from the installed poolattn's; the package's own code is shipped",
            repo_id,
            ", ".join(changed),
            model.folder,
        )
    own, peers, left_out_results = card_results(repo_id, model, results, others)
    card = build_model_card(
        model,
        repo_id=repo_id,
        results=own,
        peers=peers,
        license=license,
        study_section=study_section,
        left_out_results=left_out_results,
    )

    def save(folder: Path):
        for relative in shipped:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model.folder / relative, folder / relative)
        for name in PACKAGE_CODE:
            shutil.copy2(PACKAGE_DIR / name, folder / name)
        write_sentence_transformers_files(folder, max_length=model.config.max_length, query_prompt=model.query_prompt)
        card.save(folder / "README.md")
        scrub_local_paths(folder, local_paths(folder, extra=(model.folder.resolve(), model.folder.absolute())))

    return save


def save_checked(saves: list, check, staged: tuple = ()) -> list[Path]:
    """Run each `(save, destination)` of `saves` into a temp folder beside its destination (`files.atomic_save`),
    then `check(the temp folders)`; only when the check passes does each replace its destination. A check that
    raises leaves every destination as it was (an earlier publish's folder is kept) and removes the temp folders."""
    if not saves:
        check(list(staged))
        return []
    (save, destination), rest = saves[0], saves[1:]
    inner: list[Path] = []

    def save_then_the_rest(folder: Path):
        save(folder)
        inner.extend(save_checked(rest, check, (*staged, folder)))  # swapped in before this one, once all passed

    return [atomic_save(save_then_the_rest, destination), *inner]


def recorded_variant(model: ExportedModel):
    """The design the training manifest records (what the card says), else the config's."""
    return model.manifest.variant if model.manifest and model.manifest.variant is not None else model.variant


def repository_files(folder) -> dict[str, bytes]:
    """Every file of a repository folder, relative path -> bytes (what an upload must deliver)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# The upload
# ---------------------------------------------------------------------------------------------------------------------


def push_folder(
    folder,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload poolattn model",
) -> str:
    """`create_repo(exist_ok=True)` + `upload_folder`, the repository's files outside the folder deleted in the same
    commit; the token from `token`, `HF_TOKEN` or a saved login.

    Returns the commit URL. Raises `HubPushError` (offline, no token, unauthorised, any Hub or network error)
    saying the folder is kept.
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    kept = f"The repository folder is kept at {folder}; rerun the same command to retry the upload."
    try:
        token = check_push_possible(token)
    except HubPushError as error:
        raise HubPushError(f"Cannot push {repo_id}: {error} {kept}") from None
    try:
        huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
        # the repository becomes the folder: files of an earlier upload that it no longer holds (an ONNX export, a
        # weights file now sharded) would otherwise stay and be loaded (`.gitattributes` is kept)
        commit = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message, delete_patterns="*"
        )
    except OfflineModeIsEnabled as error:
        raise HubPushError(
            f"Cannot push {repo_id}: HF_HUB_OFFLINE is set ({error}). Unset it when online. {kept}"
        ) from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(
                f"The Hub refused {repo_id} (HTTP {status}): the token is invalid or cannot write "
                f"to {repo_id.split('/')[0]}. Log in with a write token (`hf auth login`). "
                f"{kept}"
            ) from error
        raise HubPushError(f"The Hub rejected the upload of {repo_id}: {error}. {kept}") from error
    except HFValidationError as error:  # refused before any request: retrying the same id can never work
        raise HubPushError(
            f"Cannot push to {repo_id!r}: not a repository id the Hub accepts ({error}). A repository id is "
            f"{REPOSITORY_ID_RULES}; publish again with another --hub_model_id. Nothing was uploaded; the repository "
            f"folder is kept at {folder}."
        ) from error
    except Exception as error:  # network errors (no connection, DNS, timeouts) come from the HTTP client unwrapped
        raise HubPushError(
            f"Could not reach the Hub to push {repo_id} ({type(error).__name__}: {error}). "
            f"Check the connection (or HF_ENDPOINT). {kept}"
        ) from error
    url = getattr(commit, "commit_url", None) or f"{huggingface_hub.constants.ENDPOINT}/{repo_id}"
    logger.info("%s: pushed, %s", repo_id, url)
    return url


def check_publish_inputs(
    model_folders, *, hub_model_id: str, output_dir=None, results=None, push: bool = False, token: str | None = None
) -> tuple[list[ExportedModel], list[str]]:
    """(the models, their repository ids): every check `publish` makes of its inputs, loading no weights and writing
    nothing, so a caller can run them before spending work on the folders (`publish.py --onnx` exports first).

    Raises `ValueError` for a folder that is not a complete poolattn model (`ExportedModel.read`, the allow-list's
    required files), a `hub_model_id` that is no ORG/NAME or gives a repository id the Hub refuses
    (`check_repository_id`), two models that would share a repository, a repository
    folder under `output_dir` that is a model folder or holds or lies in one (writing it would replace the model), and
    a `results` folder without mteb results; with `push`, `HubPushError` where no upload can work
    (`check_push_possible`).
    """
    models = [ExportedModel.read(folder) for folder in model_folders]
    for model in models:
        shipped_files(model.folder)  # raises ShippingError for a missing config, tokenizer or weights
    repo_ids = [repository_id(hub_model_id, variant=model.variant, trained_name=model.mteb_name) for model in models]
    if len(set(repo_ids)) != len(repo_ids):
        raise ValueError(
            f"Two models would go to the same repository ({', '.join(repo_ids)}): publish models of "
            "different paper variants together, or one custom model per --hub_model_id."
        )
    if output_dir is not None:
        _check_destinations([Path(output_dir) / repo_id.split("/")[-1] for repo_id in repo_ids], models)
    if results:
        results_root(results)
    if push:
        try:
            check_push_possible(token)
        except HubPushError as error:
            raise HubPushError(
                f"{error} Nothing was written; publish.py without --push writes the folders only."
            ) from None
    return models, repo_ids


def _check_destinations(destinations: list[Path], models: list[ExportedModel]) -> None:
    """No repository folder may be a model folder, nor hold one or lie in one: it is written anew (the folder it
    replaces is deleted), so publishing `hub/m-v5` to `--output_dir hub` would delete the model it publishes."""
    for destination in destinations:
        for model in models:
            folder, target = Path(model.folder).resolve(), destination.resolve()
            if target == folder or folder in target.parents or target in folder.parents:
                raise ValueError(
                    f"the repository folder {destination} would replace {model.folder}, the model it is written "
                    "from (publishing writes that folder anew); give another --output_dir."
                )


def publish(
    model_folders,
    *,
    hub_model_id: str,
    output_dir,
    push: bool,
    results=None,
    token: str | None = None,
    private: bool | None = None,
    license: str | None = None,
    study_sections: list[str | None] | None = None,
) -> list[Path]:
    """Write one repository folder per model under `output_dir` (`<NAME>-v<N>`), then upload each when `push`.

    `study_sections` (one per model, or None) put each model's place in a study on its card.
    Every folder is written beside its destination and checked (`check_loads`) before any replaces the folder at
    its destination, so a failed check leaves an earlier publish's folders as they were; every folder is in place
    before the first upload, so a failed push loses nothing and names what is kept. Each folder written and each
    upload is logged at INFO (`ORG/NAME-v5: repository folder written to ...`).
    """
    models, repo_ids = check_publish_inputs(
        model_folders, hub_model_id=hub_model_id, output_dir=output_dir, results=results, push=push, token=token
    )
    saves = []
    sections = list(study_sections or [None] * len(models))
    for model, repo_id, section in zip(models, repo_ids, sections):
        others = [other for other in models if other is not model]
        writer = repository_folder_writer(
            model, repo_id=repo_id, results=results, others=others, license=license, study_section=section
        )
        saves.append((writer, Path(output_dir) / repo_id.split("/")[-1]))
    # every folder loads as its card says, in one fresh process, before any replaces what is at its destination
    folders = save_checked(saves, lambda staged: check_loads(staged, [recorded_variant(model) for model in models]))
    for repo_id, folder in zip(repo_ids, folders):
        logger.info("%s: repository folder written to %s", repo_id, folder)
    if push:
        for folder, repo_id in zip(folders, repo_ids):
            push_folder(folder, repo_id, token=token, private=private)
    return folders
