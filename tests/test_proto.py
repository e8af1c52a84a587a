"""The checked-in Falco gRPC stubs match proto/ and describe Falco's wire API."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import FieldDescriptor

import eventd.proto
from eventd.proto import outputs_pb2, schema_pb2, version_pb2


def _load_protogen() -> ModuleType:
    """``tools/protogen.py``: a development tool, outside the installed package."""
    path = Path(__file__).resolve().parents[1] / "tools" / "protogen.py"
    spec = importlib.util.spec_from_file_location("protogen", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protogen = _load_protogen()
CHECKED_IN = Path(eventd.proto.__file__).parent


def test_checked_in_stubs_are_exactly_what_protogen_generates(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in CHECKED_IN.iterdir() if "_pb2" in p.name)
    assert len(names) == 9  # three protos x (_pb2.py, _pb2.pyi, _pb2_grpc.py)
    for path in written:
        assert path.read_bytes() == (CHECKED_IN / path.name).read_bytes(), f"{path.name} drifted: regenerate"


def test_sibling_imports_are_package_imports() -> None:
    text = (CHECKED_IN / "outputs_pb2.py").read_text()
    assert "from eventd.proto import schema_pb2 as schema__pb2" in text
    assert "\nimport schema_pb2" not in text
    grpc_text = (CHECKED_IN / "outputs_pb2_grpc.py").read_text()
    assert "from eventd.proto import outputs_pb2 as outputs__pb2" in grpc_text


def test_protoc_errors_are_raised(tmp_path: Path) -> None:
    broken = tmp_path / "proto"
    broken.mkdir()
    for name in protogen.PROTOS:
        (broken / name).write_text('syntax = "proto3";\nmessage {')
    with pytest.raises(RuntimeError, match="protoc failed"):
        protogen.generate(tmp_path / "out", proto_dir=broken)


def _fields(message: type) -> dict[str, tuple[int, int, str]]:
    """name -> (number, type, type full name or '')"""
    out = {}
    for f in message.DESCRIPTOR.fields:
        ref = f.message_type or f.enum_type
        out[f.name] = (f.number, f.type, ref.full_name if ref else "")
    return out


def test_outputs_service_and_messages() -> None:
    file = outputs_pb2.DESCRIPTOR
    assert file.package == "falco.outputs"
    assert file.GetOptions().go_package == "github.com/falcosecurity/client-go/pkg/api/outputs"
    service = file.services_by_name["service"]
    assert service.full_name == "falco.outputs.service"
    sub, get = service.methods_by_name["sub"], service.methods_by_name["get"]
    assert (sub.client_streaming, sub.server_streaming) == (True, True)
    assert (get.client_streaming, get.server_streaming) == (False, True)
    for method in (sub, get):
        assert method.input_type.full_name == "falco.outputs.request"
        assert method.output_type.full_name == "falco.outputs.response"
    assert outputs_pb2.request.DESCRIPTOR.fields == []
    T = FieldDescriptor
    assert _fields(outputs_pb2.response) == {
        "time": (1, T.TYPE_MESSAGE, "google.protobuf.Timestamp"),
        "priority": (2, T.TYPE_ENUM, "falco.schema.priority"),
        "source_deprecated": (3, T.TYPE_ENUM, "falco.schema.source"),
        "rule": (4, T.TYPE_STRING, ""),
        "output": (5, T.TYPE_STRING, ""),
        "output_fields": (6, T.TYPE_MESSAGE, "falco.outputs.response.OutputFieldsEntry"),
        "hostname": (7, T.TYPE_STRING, ""),
        "tags": (8, T.TYPE_STRING, ""),
        "source": (9, T.TYPE_STRING, ""),
    }
    by_name = outputs_pb2.response.DESCRIPTOR.fields_by_name
    assert by_name["source_deprecated"].GetOptions().deprecated
    assert by_name["output_fields"].message_type.GetOptions().map_entry
    assert by_name["tags"].is_repeated


def test_version_service_and_response() -> None:
    file = version_pb2.DESCRIPTOR
    assert file.package == "falco.version"
    method = file.services_by_name["service"].methods_by_name["version"]
    assert method.full_name == "falco.version.service.version"
    assert (method.client_streaming, method.server_streaming) == (False, False)
    T = FieldDescriptor
    expected = {
        "version": (1, T.TYPE_STRING),
        "major": (2, T.TYPE_UINT32),
        "minor": (3, T.TYPE_UINT32),
        "patch": (4, T.TYPE_UINT32),
        "prerelease": (5, T.TYPE_STRING),
        "build": (6, T.TYPE_STRING),
        "engine_minor": (7, T.TYPE_UINT32),
        "engine_fields_checksum": (8, T.TYPE_STRING),
        "engine_major": (9, T.TYPE_UINT32),
        "engine_patch": (10, T.TYPE_UINT32),
        "engine_version": (11, T.TYPE_STRING),
    }
    assert {k: v[:2] for k, v in _fields(version_pb2.response).items()} == expected


def test_schema_enums_have_every_spelling() -> None:
    assert schema_pb2.DESCRIPTOR.package == "falco.schema"
    priority = schema_pb2.DESCRIPTOR.enum_types_by_name["priority"]
    source = schema_pb2.DESCRIPTOR.enum_types_by_name["source"]
    assert priority.GetOptions().allow_alias and source.GetOptions().allow_alias
    levels = ["EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG"]
    for number, name in enumerate(levels):
        for spelling in (name, name.lower(), name.capitalize()):
            assert priority.values_by_name[spelling].number == number
    sources = {"SYSCALL": 0, "K8S_AUDIT": 1, "K8s_audit": 1, "K8S_audit": 1, "INTERNAL": 2, "PLUGIN": 3}
    for name, number in sources.items():
        assert source.values_by_name[name].number == number
        assert source.values_by_name[name.lower()].number == number
    assert len(priority.values) == 24 and len(source.values) == 13


def test_wire_bytes_of_a_response() -> None:
    """Field numbers and types on the wire, independent of our descriptors."""
    msg = outputs_pb2.response(priority=2, rule="r", source="syscall", tags=["t"])
    assert msg.SerializeToString() == b"\x10\x02" + b"\x22\x01r" + b"\x42\x01t" + b"\x4a\x07syscall"
