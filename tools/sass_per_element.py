"""Instructions per element of the group-rational CUDA kernels, read from their machine code (SASS).

    python tools/sass_per_element.py                       # mmkat/_C*.so of this checkout, sm_90
    python tools/sass_per_element.py --lib path/to/_C.so --arch 90 --json out.json

No GPU is needed: ``cuobjdump -sass`` (from the CUDA toolkit, or the copy in the ``triton`` wheel) disassembles
the kernels; for each kernel the script finds the loop that holds the element math (the loop with the most
FFMA (DFMA) instructions, the innermost one on a tie) and walks its hot path once. A forward conditional branch
that chooses between two alternatives (an if / else: the fall-through ends in an unconditional branch to the
point where both join) goes to the one without a CALL (a division's slow path: the huge-input form holds them),
and to the shorter where neither or both hold one; nvcc places the huge-input form before or after the direct
form. Any other forward conditional branch is taken when what it skips holds a CALL and no other conditional
branch (the slow path of a correctly rounded division), and not taken otherwise (the row-bound checks);
unconditional branches are followed. The count on that path, divided by the elements one pass of the loop handles
(the vector width in the kernel's name times ``--unroll``, MMKAT_CUDA_UNROLL of the build), is the number printed.
The default build (``MMKAT_LOAD_STAGES=3``, docs/op.md) adds the vectorized ``forward_ahead`` and ``backward_ahead``
kernels, one vector per pass (``--unroll`` does not apply to them); the plain kernels stay for the scalar path, the
bias ops (``forward_bias``, ``backward_bias``) and tensors past 32-bit vector offsets. It is a static count of issued
instructions (predicated-off ones included), the figure the backward's speed follows when it is bound by
instruction issue; it says nothing about latency or memory.
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from collections import Counter

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_INSTRUCTION = re.compile(r'/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);')
# forward_kernel<x type, out type, VEC, kBias> and backward_kernel<x type, dy type, VEC, kBias>; the second type is
# written as a back-reference (S1_, ...) where it repeats the first; kBias (Lb1E: the bias ops' kernels) is
# reported as forward_bias / backward_bias.
_TYPE = r'N3c108BFloat16E|N3c104HalfE|f|d'
_KERNEL = re.compile(rf'((?:forward|backward)_kernel(?:_ahead)?)I({_TYPE})({_TYPE}|S\d*_)?Li(\d+)E(?:Lb([01])E)?')
_DTYPES = {'N3c108BFloat16E': 'bf16', 'N3c104HalfE': 'fp16', 'f': 'fp32', 'd': 'fp64'}


def find_cuobjdump():
    candidates = [os.environ.get('CUOBJDUMP'), shutil.which('cuobjdump')]
    if os.environ.get('CUDA_HOME'):
        candidates.append(osp.join(os.environ['CUDA_HOME'], 'bin', 'cuobjdump'))
    spec = importlib.util.find_spec('triton')
    if spec is not None and spec.submodule_search_locations:
        candidates.append(osp.join(list(spec.submodule_search_locations)[0], 'backends', 'nvidia', 'bin',
                                   'cuobjdump'))
    for path in candidates:
        if path and osp.isfile(path) and os.access(path, os.X_OK):
            return path
    sys.exit('sass_per_element.py: error: no cuobjdump found (install the CUDA toolkit or triton, or set '
             'CUOBJDUMP=/path/to/cuobjdump)')


def disassemble(lib, arch):
    out = subprocess.run([find_cuobjdump(), '-sass', '-arch', f'sm_{arch}', lib], capture_output=True, text=True)
    if out.returncode != 0 or 'Function :' not in out.stdout:
        sys.exit(f'sass_per_element.py: error: cuobjdump found no sm_{arch} code in {lib}: '
                 f'{out.stderr.strip()[:300]}')
    kernels = {}
    for chunk in out.stdout.split('Function : ')[1:]:
        name, _, body = chunk.partition('\n')
        code = []
        for match in _INSTRUCTION.finditer(body):
            address, predicate, opcode, operands = match.groups()
            code.append((int(address, 16), (predicate or '').strip(), opcode, operands.strip()))
        kernels[name.strip()] = code
    return kernels


def _target(operands):
    match = re.search(r'0x([0-9a-f]+)', operands)
    return int(match.group(1), 16) if match else None


def hot_loop(code):
    """(head index, back-edge index) of the loop holding the element math."""
    index = {address: i for i, (address, *_) in enumerate(code)}
    loops = []
    for i, (address, _, opcode, operands) in enumerate(code):
        target = _target(operands) if opcode.startswith('BRA') else None
        if target is not None and target <= address and target in index:
            head = index[target]
            ffma = sum(1 for _, _, op, _ in code[head:i + 1] if op.startswith(('FFMA', 'DFMA')))
            loops.append((ffma, -(i - head), head, i))
    if not loops:
        return None
    _, _, head, end = max(loops)
    return head, end


def _else_join(code, index, i, target):
    """For a forward conditional branch at i whose fall-through ends in an unconditional forward branch just
    before the target (an if / else), the index where the two alternatives join; None otherwise."""
    if target <= i + 1:
        return None
    _, predicate, opcode, operands = code[target - 1]
    if predicate or not opcode.startswith('BRA'):
        return None
    join = index.get(_target(operands))
    return join if join is not None and join > target else None


def hot_path(code, head, end):
    """The instructions issued by one pass of the loop along its hot path (see the module doc)."""
    index = {address: i for i, (address, *_) in enumerate(code)}
    path, i, seen = [], head, set()
    while head <= i <= end and i not in seen:
        seen.add(i)
        address, predicate, opcode, operands = code[i]
        path.append(opcode)
        if i == end:
            break
        if opcode.startswith('BRA'):
            target = index.get(_target(operands))
            if target is None or target == head:
                break
            if not predicate:
                i = target
                continue
            skipped = code[i + 1:target] if target > i else []
            holds_call = any(op.startswith('CALL') for _, _, op, _ in skipped)
            join = _else_join(code, index, i, target)
            if join is not None:  # if / else: the branch picks between [i + 1, target) and [target, join)
                other = code[target:join]
                other_call = any(op.startswith('CALL') for _, _, op, _ in other)
                take = holds_call if holds_call != other_call else len(other) < len(skipped)
                i = target if take else i + 1
                continue
            nested = any(op.startswith('BRA') and pred for _, pred, op, _ in skipped)
            if holds_call and not nested:
                i = target
                continue
        i += 1
    return path


def analyse(kernels, unroll):
    rows = []
    for name, code in kernels.items():
        match = _KERNEL.search(name)
        if match is None:
            continue
        kind = match.group(1).replace('_kernel', '')  # forward, backward, backward_ahead
        if match.group(5) == '1':
            kind += '_bias'
        dtype, vec = _DTYPES[match.group(2)], int(match.group(4))
        second = match.group(3)
        if second in _DTYPES and second != match.group(2):  # a mixed pair: 'fp32/bf16' (x / out or dy)
            dtype = f'{dtype}/{_DTYPES[second]}'
        loop = hot_loop(code)
        if loop is None:
            continue
        path = hot_path(code, *loop)
        elements = vec * (1 if kind.endswith('_ahead') else unroll)
        rows.append(dict(kernel=kind, dtype=dtype, vec=vec, elements_per_pass=elements,
                         loop_instructions=loop[1] - loop[0] + 1, hot_path_instructions=len(path),
                         per_element=round(len(path) / elements, 2),
                         opcodes=dict(Counter(op.split('.')[0] for op in path).most_common())))
    return sorted(rows, key=lambda r: (r['kernel'], r['dtype'], r['vec']))


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tools/sass_per_element.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--lib', help='the mmkat._C library (default: mmkat/_C*.so of this checkout)')
    parser.add_argument('--arch', default='90', help='SM architecture to read (default 90: H100 / H200)')
    parser.add_argument('--unroll', type=int, default=1, help='MMKAT_CUDA_UNROLL of the build (default 1)')
    parser.add_argument('--json', help='also write the rows (with an opcode histogram each) to this file')
    args = parser.parse_args(argv)
    lib = args.lib
    if lib is None:
        found = sorted(f for f in os.listdir(osp.join(ROOT, 'mmkat')) if f.startswith('_C') and f.endswith('.so'))
        if not found:
            sys.exit('sass_per_element.py: error: no mmkat/_C*.so in this checkout: build it '
                     '(pip install --no-build-isolation -e .) or pass --lib')
        lib = osp.join(ROOT, 'mmkat', found[0])
    rows = analyse(disassemble(lib, args.arch), args.unroll)
    print(f'{osp.basename(lib)}, sm_{args.arch}: instructions on the hot path of the element loop')
    print(f'{"kernel":<9} {"dtype":<5} {"vec":>3} {"loop":>5} {"path":>5} {"per element":>11}')
    for r in rows:
        print(f'{r["kernel"]:<9} {r["dtype"]:<5} {r["vec"]:>3} {r["loop_instructions"]:>5} '
              f'{r["hot_path_instructions"]:>5} {r["per_element"]:>11}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(lib=osp.basename(lib), arch=args.arch, unroll=args.unroll, rows=rows), f, indent=1)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
