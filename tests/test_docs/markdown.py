"""Reading mmkat's documentation for the doc tests: fenced code blocks with their markers, tables, links, and
the brace lists (``kat_{t,s,b}_in1k.py``) the pages use for several files at once."""
import itertools
import os.path as osp
import re
from dataclasses import dataclass
from glob import glob
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
README = osp.join(ROOT, 'README.md')
MODEL_ZOO = osp.join(ROOT, 'configs', 'kat', 'README.md')


def documentation_pages() -> List[str]:
    """The pages whose code blocks are tested: the README, the model zoo and docs/*.md."""
    return [README, MODEL_ZOO] + sorted(glob(osp.join(ROOT, 'docs', '*.md')))


_FENCE = re.compile(r'^```(\S*)\s*$')
_MARKER = re.compile(r'^<!--\s*doctest:\s*(.*?)\s*-->\s*$')


@dataclass
class Block:
    path: str           # the page
    line: int           # 1-based line of the opening fence
    lang: str
    text: str
    marker: Optional[str]  # the text of a `<!-- doctest: ... -->` line right above the fence

    @property
    def id(self) -> str:
        return f'{osp.relpath(self.path, ROOT)}:{self.line}:{self.lang or "plain"}'


def code_blocks(path: str) -> List[Block]:
    """Every fenced block of a markdown page, in order; an unclosed fence is an error."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith('```'):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f'{path}:{start + 1}: a code block is not closed')
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = _MARKER.match(lines[above]) if above >= 0 else None
        blocks.append(Block(path, start + 1, opening.group(1), '\n'.join(body) + '\n',
                            marker.group(1) if marker else None))
        i += 1
    return blocks


def tables(path: str) -> List[List[Dict[str, str]]]:
    """The pipe tables of a markdown page, outside code blocks: each a list of rows, {header: cell}."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    found, current, header, in_code = [], None, None, False
    for line in lines + ['']:
        if line.startswith('```'):
            in_code = not in_code
        if in_code or not line.startswith('|'):
            if current is not None:
                found.append(current)
            current, header = None, None
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if header is None:
            header, current = cells, []
        elif set(''.join(cells)) <= set('-: '):
            continue
        else:
            assert len(cells) == len(header), f'{path}: a row of {len(cells)} cells under {len(header)} headers'
            current.append(dict(zip(header, cells)))
    return found


def expand_braces(word: str) -> List[str]:
    """``a{b,c}d{e,f}`` -> abde, abdf, acde, acdf (bash's brace expansion, without nesting)."""
    parts = re.split(r'(\{[^{}]*,[^{}]*\})', word)
    choices = [p[1:-1].split(',') if p.startswith('{') and p.endswith('}') else [p] for p in parts]
    return [''.join(c) for c in itertools.product(*choices)]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'^```.*?^```', '', f.read(), flags=re.S | re.M)
    return [github_anchor(m.group(1)) for m in re.finditer(r'^#+\s+(.*)$', text, flags=re.M)]


def relative_links(path: str) -> List[str]:
    """The targets of a page's markdown links and images that point into the repository."""
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'^```.*?^```', '', f.read(), flags=re.S | re.M)
    targets = re.findall(r'\]\(([^)\s]+)\)', text)
    return [t for t in targets if not re.match(r'^[a-z]+:', t)]


def inline_paths(path: str) -> List[str]:
    """Repository paths a page names in inline code (`tools/train.py`, `configs/kat/kat_{t,s,b}_in1k.py`)."""
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'^```.*?^```', '', f.read(), flags=re.S | re.M)
    found = []
    for code in re.findall(r'`([^`\n]+)`', text):
        if re.fullmatch(r'(benchmarks|configs|csrc|docs|mmkat|tests|tools)/[\w./{},-]*', code):
            found.extend(expand_braces(code))
    return found
