"""The `parameters` (and the backend) of a Triton config.pbtxt, read as Triton reads them:
protobuf's text format parser, told of those fields, skips every other."""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

from runtime.errors import ManifestError, brief


@functools.lru_cache(maxsize=1)
def _parameters_message() -> Any:
    """A message class of the part of Triton's ModelConfig read here, `parameters` (field 14, a map
    of string to ModelParameter{string_value}), `platform`, `backend` and `version_policy`; protobuf's text format
    parser skips every other
    field, so a config is read as Triton reads it (comments, either field order, `value {` without
    a colon, single quotes)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    kinds = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="medflow_triton_parameters.proto", package="medflow",
                                              syntax="proto3")
    parameter = file.message_type.add(name="ModelParameter")
    parameter.field.add(name="string_value", number=1, type=kinds.TYPE_STRING, label=kinds.LABEL_OPTIONAL)
    config = file.message_type.add(name="ModelConfig")
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=kinds.TYPE_STRING, label=kinds.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=kinds.TYPE_MESSAGE, type_name=".medflow.ModelParameter",
                    label=kinds.LABEL_OPTIONAL)
    config.field.add(name="parameters", number=14, type=kinds.TYPE_MESSAGE,
                     type_name=".medflow.ModelConfig.ParametersEntry", label=kinds.LABEL_REPEATED)
    config.field.add(name="platform", number=2, type=kinds.TYPE_STRING, label=kinds.LABEL_OPTIONAL)
    config.field.add(name="backend", number=17, type=kinds.TYPE_STRING, label=kinds.LABEL_OPTIONAL)
    policy = file.message_type.add(name="ModelVersionPolicy")
    latest = policy.nested_type.add(name="Latest")
    latest.field.add(name="num_versions", number=1, type=kinds.TYPE_UINT32, label=kinds.LABEL_OPTIONAL)
    policy.nested_type.add(name="All")
    specific = policy.nested_type.add(name="Specific")
    specific.field.add(name="versions", number=1, type=kinds.TYPE_INT64, label=kinds.LABEL_REPEATED)
    policy.oneof_decl.add(name="policy_choice")
    for number, (name, kind) in enumerate((("latest", "Latest"), ("all", "All"), ("specific", "Specific")), start=1):
        policy.field.add(name=name, number=number, type=kinds.TYPE_MESSAGE, label=kinds.LABEL_OPTIONAL,
                         type_name=f".medflow.ModelVersionPolicy.{kind}", oneof_index=0)
    config.field.add(name="version_policy", number=3, type=kinds.TYPE_MESSAGE, label=kinds.LABEL_OPTIONAL,
                     type_name=".medflow.ModelVersionPolicy")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("medflow.ModelConfig"))


# A string, a comment, or a field name before `[`: protobuf skips the fields it was not told of
# only when a list is written `name: [`, which Triton reads as `name [`.
_LIST = re.compile(r'("(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*)|\b([A-Za-z_][A-Za-z0-9_]*)(\s*)\[')


def _with_colon(match: re.Match[str]) -> str:
    return match.group(1) if match.group(1) is not None else f"{match.group(2)}:{match.group(3)}["


def config_parameters(text: str, source: str) -> dict[str, str]:
    """The `parameters` of a config.pbtxt's text, key -> string_value, as Triton's parser reads them;
    ManifestError for a text it cannot parse."""
    return {key: value.string_value for key, value in _parsed(text, source).parameters.items()}


# Triton's platforms and the backend each runs on.
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
                     "tensorflow_graphdef": "tensorflow", "tensorflow_savedmodel": "tensorflow"}


def config_backend(text: str, source: str) -> str | None:
    """The backend a config.pbtxt's model runs on: its `backend`, or its `platform`'s; None where it
    names neither (an ensemble, say)."""
    message = _parsed(text, source)
    return message.backend or PLATFORM_BACKENDS.get(message.platform) or None


def served_versions(text: str, source: str, available: Sequence[int]) -> list[int]:
    """The versions among `available` that a config.pbtxt's `version_policy` has Triton serve, as
    Triton reads it: the newest `num_versions` (without a policy: the newest one), all, or the
    `specific` ones."""
    policy = _parsed(text, source).version_policy
    newest_first = sorted(set(available), reverse=True)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return sorted(newest_first)
    if choice == "specific":
        return sorted(set(policy.specific.versions) & set(newest_first))
    count = policy.latest.num_versions if choice == "latest" else 1
    return sorted(newest_first[:count])


def _parsed(text: str, source: str) -> Any:
    from google.protobuf import text_format

    message = _parameters_message()()
    try:
        text_format.Parse(_LIST.sub(_with_colon, text), message, allow_unknown_field=True)
    except (text_format.ParseError, RecursionError) as exc:
        raise ManifestError(f"{source} is not a config Triton can read ({brief(exc)}); restore "
                            "the config that export wrote.") from None
    return message
