"""tools/sass_per_element.py: the hot-path walk on a hand-written listing, and the tool on the built library."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest

from mmkat.ops import extension_info

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'sass_per_element.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('sass_per_element', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listing(lines):
    return [(0x10 * i, pred, op, operands) for i, (pred, op, operands) in enumerate(lines)]


def test_the_walk_skips_a_slow_call_and_the_huge_input_form_and_stops_at_the_back_edge():
    tool = load_tool()
    code = listing([
        ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x00 loop head
        ('@P0', 'BRA', '0x70'),                  # 0x10 the huge-input test: its form lies behind the branch
        ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x20 the direct form
        ('@P1', 'BRA', '0x50'),                  # 0x30 a division's fast path jumps over its slow call
        ('', 'CALL.REL.NOINC', '0x200'),         # 0x40 the slow call (skipped)
        ('', 'BRA', '0x90'),                     # 0x50 joins after the huge-input form
        ('', 'FMUL', 'R1, R1, R1'),              # 0x60 (unreached)
        ('', 'MUFU.RCP', 'R4, R1'),              # 0x70 the huge-input form (not walked)
        ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x80
        ('', 'FADD', 'R5, R5, R1'),              # 0x90 after the join
        ('@P2', 'BRA', '0x0'),                   # 0xa0 back edge
    ])
    head, end = tool.hot_loop(code)
    assert (head, end) == (0, 10)
    assert tool.hot_path(code, head, end) == ['FFMA', 'BRA', 'FFMA', 'BRA', 'BRA', 'FADD', 'BRA']


DIRECT_FIRST = [  # if / else with the direct form as the fall-through and the huge-input form behind the branch
    ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x00 loop head
    ('@P0', 'BRA', '0x50'),                  # 0x10 the huge-input test
    ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x20 the direct form
    ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x30
    ('', 'BRA', '0x90'),                     # 0x40 the direct form's end: joins after the huge-input form
    ('@P1', 'BRA', '0x70'),                  # 0x50 the huge-input form: a per-element choice
    ('', 'CALL.REL.NOINC', '0x200'),         # 0x60 a division's slow call
    ('', 'MUFU.RCP', 'R4, R1'),              # 0x70
    ('', 'FMUL', 'R1, R1, R4'),              # 0x80
    ('', 'FADD', 'R5, R5, R1'),              # 0x90 the join
    ('@P2', 'BRA', '0x0'),                   # 0xa0 back edge
]
FAR_FIRST = [  # the same if / else laid out the other way round: the huge-input form falls through
    ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x00 loop head
    ('@!P0', 'BRA', '0x70'),                 # 0x10 not huge: jump to the direct form
    ('@P1', 'BRA', '0x40'),                  # 0x20 the huge-input form: a per-element choice
    ('', 'CALL.REL.NOINC', '0x200'),         # 0x30 a division's slow call
    ('', 'MUFU.RCP', 'R4, R1'),              # 0x40
    ('', 'FMUL', 'R1, R1, R4'),              # 0x50
    ('', 'BRA', '0x90'),                     # 0x60 the huge-input form's end: joins after the direct form
    ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x70 the direct form
    ('', 'FFMA', 'R1, R2, R3, R1'),          # 0x80
    ('', 'FADD', 'R5, R5, R1'),              # 0x90 the join
    ('@P2', 'BRA', '0x0'),                   # 0xa0 back edge
]


@pytest.mark.parametrize('layout,expected', [
    (DIRECT_FIRST, ['FFMA', 'BRA', 'FFMA', 'FFMA', 'BRA', 'FADD', 'BRA']),
    (FAR_FIRST, ['FFMA', 'BRA', 'FFMA', 'FFMA', 'FADD', 'BRA']),
])
def test_the_walk_takes_the_direct_form_of_an_if_else_in_either_layout(layout, expected):
    """nvcc places the huge-input form before or after the direct form; the walk takes the alternative without the
    slow call either way (and, where neither or both hold one, the shorter)."""
    tool = load_tool()
    code = listing(layout)
    head, end = tool.hot_loop(code)
    assert (head, end) == (0, 10)
    assert tool.hot_path(code, head, end) == expected


def test_the_walk_takes_the_shorter_alternative_when_neither_holds_a_call():
    tool = load_tool()
    long_first = [(p, op, ops) for p, op, ops in FAR_FIRST if not op.startswith('CALL')]  # 0x30 CALL dropped
    code = listing([(p, op, ops.replace('0x40', '0x30').replace('0x70', '0x60').replace('0x90', '0x80'))
                    if op == 'BRA' else (p, op, ops) for p, op, ops in long_first])
    head, end = tool.hot_loop(code)
    assert tool.hot_path(code, head, end) == ['FFMA', 'BRA', 'FFMA', 'FFMA', 'FADD', 'BRA']


def test_kernel_names_give_kind_dtype_and_vector_width():
    """Mangled template names: the second type as a back-reference or a mixed pair, kBias (Lb1E) as *_bias."""
    tool = load_tool()
    code = listing(DIRECT_FIRST)
    prefix = '_ZN5mmkat55_GLOBAL__N__0_22_group_rational_cuda_cu_0'
    names = {
        f'{prefix}15backward_kernelIN3c108BFloat16ES3_Li8ELb0EEEvPKT0_': ('backward', 'bf16', 8),
        f'{prefix}15backward_kernelIN3c108BFloat16ES3_Li8ELb1EEEvPKT0_': ('backward_bias', 'bf16', 8),
        f'{prefix}14forward_kernelIfN3c108BFloat16ELi4ELb1EEEvPKT_': ('forward_bias', 'fp32/bf16', 4),
        f'{prefix}21backward_kernel_aheadIN3c104HalfES3_Li8EEEvPKT0_': ('backward_ahead', 'fp16', 8),
        f'{prefix}13reduce_kernelIfEEvPKT_': None,
    }
    rows = tool.analyse({name: code for name in names}, 1)
    assert sorted((r['kernel'], r['dtype'], r['vec']) for r in rows) == sorted(v for v in names.values() if v)


@pytest.mark.skipif(not extension_info()['with_cuda'], reason='mmkat._C was built without CUDA kernels')
def test_the_tool_reads_every_kernel_of_the_built_library(tmp_path):
    tool = load_tool()
    try:
        tool.find_cuobjdump()
    except SystemExit:
        pytest.skip('no cuobjdump (CUDA toolkit or triton) on this machine')
    out = subprocess.run([sys.executable, TOOL, '--lib', extension_info()['path'], '--json', str(tmp_path / 'r.json')],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / 'r.json').read_text())['rows']
    found = {(r['kernel'], r['dtype'], r['vec']) for r in rows}
    for kernel in ('forward', 'backward', 'forward_bias', 'backward_bias'):
        assert {(kernel, 'bf16', 8), (kernel, 'fp16', 8), (kernel, 'fp32', 4), (kernel, 'bf16', 1)} <= found
    assert {kernel for kernel, _, _ in found} <= {'forward', 'backward', 'forward_ahead', 'backward_ahead',
                                                  'forward_bias', 'backward_bias'}
    for r in rows:  # the element math is on the walked path: at least one FMA per element, fewer than the loop
        assert 1 <= r['opcodes'].get('FFMA', r['opcodes'].get('DFMA', 0)) / r['elements_per_pass']
        assert 0 < r['hot_path_instructions'] <= r['loop_instructions']
    assert 'per element' in out.stdout
