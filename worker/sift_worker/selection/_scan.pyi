"""Fused k-center scan kernels (``_scan.c``); buffers are C-contiguous arrays."""

def f32_update(
    x: object,
    ld: int,
    dim: int,
    q: object,
    norms: object | None,
    maxsim: object,
    assign: object | None,
    aid: int,
    p0: int,
    p1: int,
) -> None: ...
def i8_scan(
    x: object,
    ld: int,
    q: object,
    qscale: float,
    scale: object,
    lowbar: object | None,
    out: object | None,
    pos: object | None,
    p0: int,
    p1: int,
) -> int: ...
def f32_recheck(
    x: object,
    ld: int,
    dim: int,
    q: object,
    norms: object,
    rows: object,
    pos: object,
    maxsim: object,
    assign: object,
    aid: int,
    thr: object | None,
    lowbar: object | None,
) -> int: ...
def tile_min(values: object, tile: int, out: object, t0: int, t1: int) -> None: ...
def unit_rows(
    x: object,
    dim: int,
    norms: object,
    colsum: object,
    store: object,
    ld: int,
    row0: int,
    scale: object | None,
    err: object | None,
) -> None: ...
def simd() -> str: ...
