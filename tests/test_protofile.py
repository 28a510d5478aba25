"""caffe_ft.protofile: error messages a user can act on, and atomic writes."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from caffe_ft.errors import CaffeError
from caffe_ft.proto import caffe_pb2
from caffe_ft.protofile import (
    atomic_write,
    parse_text,
    read_binary,
    read_text,
    write_binary,
    write_text,
)


def test_syntax_error_names_file_line_column_and_token(tmp_path: Path) -> None:
    text = 'name: "net"\nlayer {\n  name: "relu"\n  type: ReLU\n}\n'
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    # The unquoted type value is the offending token; columns are 1-based.
    line = 4
    column = text.splitlines()[line - 1].index("ReLU") + 1
    with pytest.raises(CaffeError) as err:
        read_text(path, caffe_pb2.NetParameter())
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:{column}: ")
    assert "(at 'ReLU')" in message


def test_missing_file_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CaffeError) as err:
        read_text("models/none/train_val.prototxt", caffe_pb2.NetParameter(), "Net file")
    assert str(err.value) == "Net file not found: models/none/train_val.prototxt"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CaffeError, match="is a directory, expected a file"):
        read_binary(tmp_path, caffe_pb2.NetParameter())


def test_binary_file_read_as_text_says_so(tmp_path: Path) -> None:
    path = tmp_path / "w.caffemodel"
    path.write_bytes(b"\x12\x07\xff\xfe\x00binary")
    with pytest.raises(CaffeError) as err:
        read_text(path, caffe_pb2.NetParameter())
    assert str(err.value).startswith(f"{path}: not a text prototxt")
    assert "caffemodel" in str(err.value)


def test_corrupt_binary_names_the_file_and_message_type(tmp_path: Path) -> None:
    path = tmp_path / "truncated.caffemodel"
    whole = caffe_pb2.NetParameter(name="n", layer=[caffe_pb2.LayerParameter(name="a")])
    path.write_bytes(whole.SerializeToString()[:-3])
    with pytest.raises(CaffeError) as err:
        read_binary(path, caffe_pb2.NetParameter())
    assert str(err.value).startswith(f"{path}: not a valid binary NetParameter")


def test_fork_fields_are_listed_in_one_message_with_their_lines() -> None:
    text = ('layer {\n  name: "bn"\n  type: "BN"\n  bn_param { frozen: true }\n}\n'
            'layer {\n  name: "bn2"\n  bn_param { }\n  convolution_param { filter_stride: 2 }\n}\n')
    with pytest.raises(CaffeError) as err:
        parse_text(text, caffe_pb2.NetParameter(), "fork.prototxt")
    message = str(err.value)
    assert message.startswith("fork.prototxt: 2 field(s) not in BVLC caffe.proto")
    assert "LayerParameter.bn_param (line 4, 8)" in message
    assert "ConvolutionParameter.filter_stride (line 9)" in message
    # A field nested inside an unknown one is not separately reported.
    assert "frozen" not in message


def test_text_and_binary_round_trip(tmp_path: Path) -> None:
    net = caffe_pb2.NetParameter(name="n", layer=[caffe_pb2.LayerParameter(
        name="ip", type="InnerProduct", inner_product_param={"num_output": 3})])
    write_text(tmp_path / "n.prototxt", net)
    write_binary(tmp_path / "n.caffemodel", net)
    assert read_text(tmp_path / "n.prototxt", caffe_pb2.NetParameter()) == net
    assert read_binary(tmp_path / "n.caffemodel", caffe_pb2.NetParameter()) == net


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name != keep)


def test_atomic_write_keeps_the_old_file_when_serialization_fails(tmp_path: Path) -> None:
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"old weights")
    # ClipParameter's min and max are proto2 `required`: serializing it unset raises.
    with pytest.raises(Exception, match="required"):
        write_binary(path, caffe_pb2.ClipParameter())
    assert path.read_bytes() == b"old weights"
    assert _leftovers(tmp_path, path.name) == []


def test_atomic_write_keeps_the_old_file_when_interrupted_midway(tmp_path: Path) -> None:
    path = tmp_path / "snap.solverstate"
    path.write_bytes(b"old state")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as handle:
            handle.write(b"half of the new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old state"
    assert _leftovers(tmp_path, path.name) == []


def test_atomic_write_into_a_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "out.prototxt"
    with pytest.raises(CaffeError, match=re.escape(f"folder {target.parent} does not exist")):
        write_text(target, caffe_pb2.NetParameter())


@pytest.mark.parametrize("text, line, column", [
    ('layer {\n  name: "a"\n}\n}\n', 4, 1),  # an extra closing brace
    ('layer\n  name: "a"\n}\n', 2, 3),  # a missing opening brace
    ('layer {\n  name "a"\n}\n', 2, 8),  # a missing colon before a string
])
def test_stray_brace_or_colon_is_a_syntax_error_not_a_fork_field(
        text: str, line: int, column: int) -> None:
    with pytest.raises(CaffeError) as err:
        parse_text(text, caffe_pb2.NetParameter(), "bad.prototxt")
    message = str(err.value)
    assert message.startswith(f"bad.prototxt:{line}:{column}: Expected ")
    assert "fork" not in message


def test_syntax_error_after_a_fork_field_is_reported_as_the_syntax_error() -> None:
    text = 'layer {\n  bn_param { frozen: true }\n}\n}\n'
    with pytest.raises(CaffeError) as err:
        parse_text(text, caffe_pb2.NetParameter(), "bad.prototxt")
    assert str(err.value).startswith("bad.prototxt:4:1: ")
    assert "fork" not in str(err.value)


def test_non_repeated_field_given_twice_is_refused_with_its_line() -> None:
    # Caffe's TextFormat::Parse refuses this; protobuf's Merge would keep 7.
    text = ('layer {\n  name: "ip"\n  type: "InnerProduct"\n'
            '  inner_product_param {\n    num_output: 20\n    num_output: 7\n  }\n}\n')
    with pytest.raises(CaffeError) as err:
        parse_text(text, caffe_pb2.NetParameter(), "dup.prototxt")
    message = str(err.value)
    assert message.startswith("dup.prototxt:6:")
    assert 'Non-repeated field "num_output" is specified multiple times' in message


def test_repeated_fields_may_repeat() -> None:
    net = parse_text('layer { name: "a" top: "x" top: "y" }\nlayer { name: "b" }\n',
                     caffe_pb2.NetParameter())
    assert [layer.name for layer in net.layer] == ["a", "b"]
    assert list(net.layer[0].top) == ["x", "y"]


def test_nesting_past_the_limit_names_file_and_line() -> None:
    from caffe_ft.protofile import MAX_NESTING
    text = 'name: "n"\n' + "x { " * 1000 + "}" * 1000 + "\n"
    with pytest.raises(CaffeError) as err:
        parse_text(text, caffe_pb2.NetParameter(), "deep.prototxt")
    column = 4 * MAX_NESTING + 3  # the opening brace that passes the limit
    assert str(err.value) == (f"deep.prototxt:2:{column}: blocks nested deeper than "
                              f"{MAX_NESTING} levels")


def test_nesting_up_to_the_limit_reaches_the_parser() -> None:
    from caffe_ft.protofile import MAX_NESTING
    # Within the limit, the (unknown) field is reported, not the depth.
    text = "x { " * MAX_NESTING + "}" * MAX_NESTING + "\n"
    with pytest.raises(CaffeError, match=r"1 field\(s\) not in BVLC caffe.proto.*NetParameter.x"):
        parse_text(text, caffe_pb2.NetParameter(), "deep.prototxt")
