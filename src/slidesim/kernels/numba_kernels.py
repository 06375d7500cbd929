"""numba kernels (floor L2) of the fused distance reduction Σ w·|I − T|^p (p = 1 or 2), forward and backward, and
of the correlation's product tiles.

Imported only by :mod:`slidesim.kernels.numba_ops`, on first use. Every kernel is compiled once per dtype and cached
on disk (``cache=True``), so a new process loads machine code instead of recompiling. numba's cache checks only the
file that defines a kernel, so everything the cached kernels inline, the LLVM tile below included, lives in this one
file.

Sums over linear channels run in register tiles. numba vectorizes the innermost loop of a
kernel, so an accumulator that lives across the loop over template taps has to sit in memory, and every tap then
reloads and stores it: those loads and adds, not the differences, would bound the kernel. :func:`tile_sums`
instead emits the tap loop of one output tile as LLVM IR with vector values: R vectors of consecutive outputs for
K templates, R·K accumulators held in registers for all taps, one load per image vector shared by the K templates
and one broadcast per template value. Each tap then costs a subtract and a multiply-add per vector for ssd
(``fmuladd(d, d, acc)``: fused, rounded once, on every CPU with FMA) or a subtract, an absolute value and an add
for sad; mask weights add a broadcast and multiply in. No fast-math flag is set anywhere: NaN and infinities
propagate as in scalar code, so a NaN pixel reaches exactly the windows that contain it. Circular channels run in
a general kernel, one template per pass, and so do per-template and per-image masks when a zero weight must skip
a non-finite difference (see the numba engine); backward runs fused too.

Layouts: image [B, C, Hp, Wp], templates [Bk, T, C, h, w], weights [Bw, Tw, Cw, h, w], periods [C] (0 where a
channel is not circular), out and grad [B, T, H', W']. Bk, Bw ∈ {1, B}; Tw ∈ {1, T}; Cw ∈ {1, C}.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_VECTOR_BITS = 256  # AVX2 registers; LLVM splits each vector in two where a CPU has only 128-bit registers
VECTOR_BYTES = _VECTOR_BITS // 8
_I64 = ir.IntType(64)
_loop_ids = itertools.count()
TILE_ALIGN = 12  # tile widths, in vectors, all divide it (6, 4, 3 or 2 vectors: see _band_sums)
MAX_GROUP = 5  # templates per tile that _band_sums dispatches: k = 1 … 5
MAX_WEIGHTED_GROUP = 4  # the same with weights, whose broadcasts take registers too
MAX_PRODUCT_GROUP = 4  # templates per tile of a correlation's cross term (_band_products)


def _literal(value: types.Type, name: str) -> int:
    if not isinstance(value, types.IntegerLiteral):
        raise TypeError(f"tile_sums: {name} must be a compile-time integer constant, got {value}")
    return value.literal_value


@intrinsic(prefer_literal=True)
def tile_sums(
    typingctx, plane, base, offsets, values, weights, vstart, out, ostart, ostride, vectors, templates, power, weighted
):
    """out[ostart + k·ostride + m] = Σ_tap w · |values[v] − plane[base + offsets[tap] + m]|^power, v = vstart +
    tap·K + k, for m < R·lanes and k < K (R = ``vectors``, K = ``templates``; lanes = 8 for float32, 4 for
    float64); w = weights[v] when ``weighted`` is 1, else 1 (and weights is not read). Power 0 (unweighted only)
    sums products instead: Σ_tap values[v] · plane[base + offsets[tap] + m], the cross term of a correlation.

    plane, values, weights and out are 1-D contiguous arrays of one float dtype, offsets a 1-D int64 array (one
    entry per tap); R, K, power (1 or 2) and weighted (0 or 1) must be literal integers. Nothing is
    bounds-checked: the caller pads plane so that every read is inside it.
    """
    R, K, p = _literal(vectors, "vectors"), _literal(templates, "templates"), _literal(power, "power")
    scaled = _literal(weighted, "weighted")
    if p not in (0, 1, 2) or scaled not in (0, 1) or (p == 0 and scaled) or R < 1 or K < 1:
        raise TypeError(
            "tile_sums: needs power 0 (unweighted), 1 or 2, weighted 0 or 1, positive sizes; "
            f"got {p}, {scaled}, {R}, {K}"
        )
    dtype = plane.dtype
    if dtype not in (types.float32, types.float64) or any(a.dtype != dtype for a in (values, weights, out)):
        raise TypeError(f"tile_sums: plane, values, weights and out must share float32 or float64, got {plane}")
    sig = types.void(
        plane, types.intp, offsets, values, weights, types.intp, out, types.intp, types.intp,
        vectors, templates, power, weighted,
    )  # fmt: skip

    def codegen(context, builder, signature, args):
        plane_v, base_v, offsets_v, values_v, weights_v, vstart_v, out_v, ostart_v, ostride_v = args[:9]
        argtypes = signature.args

        def data(index, value):
            return context.make_array(argtypes[index])(context, builder, value).data

        plane_p, offsets_p, values_p = data(0, plane_v), data(2, offsets_v), data(3, values_v)
        weights_p, out_p = data(4, weights_v), data(6, out_v)
        scalar = context.get_value_type(dtype)
        bits = 32 if dtype == types.float32 else 64
        lanes = _VECTOR_BITS // bits
        vec = ir.VectorType(scalar, lanes)
        # fmuladd: one fused multiply-add where the CPU has FMA, else a multiply and an add (never a library call)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{lanes}f{bits}"
        )
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), f"llvm.fabs.v{lanes}f{bits}")
        zero, undef = ir.Constant(vec, None), ir.Constant(vec, ir.Undefined)
        broadcast = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        taps = builder.extract_value(context.make_array(argtypes[2])(context, builder, offsets_v).shape, 0)

        def const(value: int) -> ir.Constant:
            return ir.Constant(_I64, value)

        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", taps, const(0)), loop, done)

        builder.position_at_end(loop)
        tap = builder.phi(_I64)
        tap.add_incoming(const(0), entry)
        accumulators = [builder.phi(vec) for _ in range(R * K)]
        for acc in accumulators:
            acc.add_incoming(zero, entry)
        start = builder.add(base_v, builder.load(builder.gep(offsets_p, [tap])))
        images = [
            builder.load(
                builder.bitcast(builder.gep(plane_p, [builder.add(start, const(r * lanes))]), vec.as_pointer()),
                align=bits // 8,
            )
            for r in range(R)
        ]
        first_value = builder.add(vstart_v, builder.mul(tap, const(K)))
        updated = []

        def splat_of(pointer, index):
            value = builder.load(builder.gep(pointer, [index]))
            return builder.shuffle_vector(builder.insert_element(undef, value, const(0)), undef, broadcast)

        for k in range(K):
            index = builder.add(first_value, const(k))
            splat = splat_of(values_p, index)
            weight = splat_of(weights_p, index) if scaled else None
            for r in range(R):
                acc = accumulators[k * R + r]
                if p == 0:  # a product, for correlations: value · image + acc, rounded once
                    updated.append(builder.call(fma, [splat, images[r], acc]))
                    continue
                difference = builder.fsub(splat, images[r])
                if p == 2 and scaled:  # (w·d)·d + acc
                    updated.append(builder.call(fma, [builder.fmul(difference, weight), difference, acc]))
                elif p == 2:
                    updated.append(builder.call(fma, [difference, difference, acc]))
                elif scaled:
                    updated.append(builder.call(fma, [builder.call(fabs, [difference]), weight, acc]))
                else:
                    updated.append(builder.fadd(builder.call(fabs, [difference]), acc))
        next_tap = builder.add(tap, const(1))
        body_end = builder.block  # the block that branches back (the body is one block today; this keeps it right)
        tap.add_incoming(next_tap, body_end)
        for acc, new in zip(accumulators, updated, strict=True):
            acc.add_incoming(new, body_end)
        latch = builder.cbranch(builder.icmp_signed("<", next_tap, taps), loop, done)
        latch.set_metadata("llvm.loop", _no_unrolling(builder.module))

        builder.position_at_end(done)
        totals = []
        for new in updated:  # every phi first: LLVM requires them at the top of the block
            total = builder.phi(vec)
            total.add_incoming(zero, entry)
            total.add_incoming(new, body_end)
            totals.append(total)
        for k in range(K):
            row = builder.add(ostart_v, builder.mul(const(k), ostride_v))
            for r in range(R):
                total = totals[k * R + r]
                target = builder.gep(out_p, [builder.add(row, const(r * lanes))])
                builder.store(total, builder.bitcast(target, vec.as_pointer()), align=bits // 8)
        return context.get_dummy_value()

    return sig, codegen


def _no_unrolling(module: ir.Module) -> ir.MDValue:
    """Loop metadata that keeps LLVM from unrolling a tap loop: the copies' loads, held at once, would push the
    tile out of the 16 vector registers (an unrolled 2 × 5 tile spills and runs 1.5× slower)."""
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    name = ir.MetaDataString(module, f"slidesim.tile.{next(_loop_ids)}")  # one identity per loop
    loop_id = module.add_metadata([name, disable])
    loop_id.operands = (loop_id, disable)  # a loop's metadata node begins with a reference to itself
    return loop_id


@numba.njit(inline="always")
def _tile_row(
    plane, base, offsets, values, weights, vstart, scratch, count, ostride, vectors, templates, power, weighted
):
    """The tiles of one band, ``vectors`` × ``templates`` each (literal sizes, inlined into :func:`_band_sums`)."""
    for m in range(0, count, vectors * (VECTOR_BYTES // plane.itemsize)):
        if power == 1:
            tile_sums(
                plane, base + m, offsets, values, weights, vstart, scratch, m, ostride, vectors, templates, 1, weighted
            )
        else:
            tile_sums(
                plane, base + m, offsets, values, weights, vstart, scratch, m, ostride, vectors, templates, 2, weighted
            )


@numba.njit(inline="always")
def _band_sums(plane, base, offsets, values, weights, vstart, scratch, count, ostride, k, power, weighted):
    """scratch[j·ostride + m] = Σ_tap w · |values[v] − plane[base + offsets[tap] + m]|^power for m < count
    (rounded up to whole tiles) and the k templates j of one group (v = vstart + tap·k + j; w = weights[v] when
    ``weighted``, else 1).

    The tile's shape (vectors of outputs × templates) keeps its accumulators, the image vectors they share and the
    broadcast values within the 16 vector registers: 6 × 1, 4 × 2, 3 × 3, 2 × 4 or 2 × 5 templates (k ≤ 5), and
    with weights, which need a second broadcast, 6 × 1, 3 × 2, 2 × 3 or 2 × 4 (k ≤ 4). The sizes reach
    :func:`tile_sums` as literals, so each shape is its own branch.
    """
    if weighted:
        if k == 1:
            _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 6, 1, power, 1)
        elif k == 2:
            _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 3, 2, power, 1)
        elif k == 3:
            _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 2, 3, power, 1)
        else:
            _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 2, 4, power, 1)
    elif k == 1:
        _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 6, 1, power, 0)
    elif k == 2:
        _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 4, 2, power, 0)
    elif k == 3:
        _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 3, 3, power, 0)
    elif k == 4:
        _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 2, 4, power, 0)
    else:
        _tile_row(plane, base, offsets, values, weights, vstart, scratch, count, ostride, 2, 5, power, 0)


@numba.njit(inline="always")
def _product_row(plane, base, offsets, values, vstart, scratch, count, ostride, vectors, templates):
    """The product tiles of one band (literal sizes, inlined into :func:`_band_products`)."""
    for m in range(0, count, vectors * (VECTOR_BYTES // plane.itemsize)):
        tile_sums(plane, base + m, offsets, values, values, vstart, scratch, m, ostride, vectors, templates, 0, 0)


@numba.njit(inline="always")
def _band_products(plane, base, offsets, values, weights, vstart, scratch, count, ostride, k, power, weighted):
    """scratch[j·ostride + m] = Σ_tap values[v] · plane[base + offsets[tap] + m] (v = vstart + tap·k + j), the
    cross term of a correlation, for the k ≤ MAX_PRODUCT_GROUP templates j of one group; power, weighted and
    weights are not read (the signature is :func:`_band_sums`'s, so that both drive :func:`_tile_task`).

    A product needs no difference register, so the tiles are wider than the distances': 6 × 1, 4 × 2, 3 × 3 and
    3 × 4 (12 accumulators, 3 image vectors and a broadcast: the 16 vector registers).
    """
    if k == 1:
        _product_row(plane, base, offsets, values, vstart, scratch, count, ostride, 6, 1)
    elif k == 2:
        _product_row(plane, base, offsets, values, vstart, scratch, count, ostride, 4, 2)
    elif k == 3:
        _product_row(plane, base, offsets, values, vstart, scratch, count, ostride, 3, 3)
    else:
        _product_row(plane, base, offsets, values, vstart, scratch, count, ostride, 3, 4)


@numba.njit(inline="always")
def _tile_tasks(out, group, band):
    """(groups, bands, tasks) of the tiled kernel: one task per image, group of templates and band of rows."""
    groups = (out.shape[1] + group - 1) // group
    bands = (out.shape[2] + band - 1) // band
    return groups, bands, out.shape[0] * groups * bands


@numba.njit(inline="always")
def _tile_task(task, band_sums, planes, length, values, weights, offsets, power, weighted, group, Wq, band, out):
    """One task of :func:`distance_tiles` or :func:`correlate_tiles`, whose tiles ``band_sums`` runs."""
    groups, bands, _ = _tile_tasks(out, group, band)
    T, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    b = task // (groups * bands)
    g = (task // bands) % groups
    y0 = (task % bands) * band
    rows = min(band, Ho - y0)
    t0 = g * group
    k = min(group, T - t0)
    bk = b if values.shape[0] > 1 else 0
    bw = b if weights.shape[0] > 1 else 0
    count = (rows - 1) * Wq + Wo
    align = TILE_ALIGN * VECTOR_BYTES // planes.itemsize
    ostride = (count + align - 1) // align * align
    scratch = np.empty(k * ostride, dtype=out.dtype)
    vstart = t0 * offsets.shape[0]
    base = b * length + y0 * Wq
    band_sums(planes, base, offsets, values[bk], weights[bw], vstart, scratch, count, ostride, k, power, weighted)
    for j in range(k):
        for r in range(rows):
            start = j * ostride + r * Wq
            out[b, t0 + j, y0 + r, :] = scratch[start : start + Wo]


@numba.njit(parallel=True, cache=True)
def distance_tiles(planes, length, values, weights, offsets, power, weighted, group, Wq, band, out):
    """Σ |I − T|^p of every template, image and output position, in register tiles (:func:`_band_sums`).

    ``planes`` holds each image as its stride-phase planes of Hq × Wq (the image split by row and column residue
    modulo the stride), all channels, flattened: image b starts at b·length, and the array runs at least
    TILE_ALIGN vectors past the last image, so that the last tile of a band may read past its last output. The
    output is computed Wq columns wide, so template tap k reads one contiguous run that starts at ``offsets[k]``
    plus the output's position, whatever the channel, stride and dilation. ``values`` [Bk, T·taps] holds the
    templates in groups of ``group``, each tap-major (group g's k templates at g·group·taps, tap by tap), and
    ``weights`` [Bw, T·taps] their mask weights in the same layout when ``weighted`` is 1 (else it is not read).
    Tasks are (image, group, band of ``band`` output rows) on threads; out [B, T, H', W'].
    """
    for task in numba.prange(_tile_tasks(out, group, band)[2]):
        _tile_task(task, _band_sums, planes, length, values, weights, offsets, power, weighted, group, Wq, band, out)


@numba.njit(cache=True)
def distance_tiles_serial(planes, length, values, weights, offsets, power, weighted, group, Wq, band, out):
    """:func:`distance_tiles` on one thread: below a few million differences, starting threads costs more than
    it saves. (A separate function, not a second dispatcher of the same one: numba's disk cache keys compiled
    code by function and signature, not by the parallel flag, so two dispatchers of one function would load each
    other's machine code.)
    """
    for task in range(_tile_tasks(out, group, band)[2]):
        _tile_task(task, _band_sums, planes, length, values, weights, offsets, power, weighted, group, Wq, band, out)


@numba.njit(parallel=True, cache=True)
def correlate_tiles(planes, length, values, offsets, group, Wq, band, out):
    """Σ values · I of every template, image and output position (a correlation's cross term), in register tiles
    (:func:`_band_products`); the layouts are :func:`distance_tiles`'s, with groups of ``group`` templates."""
    for task in numba.prange(_tile_tasks(out, group, band)[2]):
        _tile_task(task, _band_products, planes, length, values, values, offsets, 0, 0, group, Wq, band, out)


@numba.njit(cache=True)
def correlate_tiles_serial(planes, length, values, offsets, group, Wq, band, out):
    """:func:`correlate_tiles` on one thread (see :func:`distance_tiles_serial`)."""
    for task in range(_tile_tasks(out, group, band)[2]):
        _tile_task(task, _band_products, planes, length, values, values, offsets, 0, 0, group, Wq, band, out)


@numba.njit(inline="always")
def _wrapped(d, period):
    """The signed difference taken the short way round when period > 0."""
    if period > 0:
        half = 0.5 * period
        return ((d + half) % period) - half
    return d


@numba.njit(parallel=True, cache=True)
def distance_general(image, templates, weights, periods, power, sy, sx, dy, dx, out):
    """Σ w·|wrap(I − T)|^p with weights and circular channels, one template per pass."""
    B, C = image.shape[0], image.shape[1]
    Bk, T, h, w = templates.shape[0], templates.shape[1], templates.shape[3], templates.shape[4]
    Bw, Tw, Cw = weights.shape[0], weights.shape[1], weights.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    for task in numba.prange(B * T * Ho):
        b = task // (T * Ho)
        t = (task // Ho) % T
        y = task % Ho
        bk, bw, tw = (b if Bk > 1 else 0), (b if Bw > 1 else 0), (t if Tw > 1 else 0)
        acc = np.zeros(Wo, dtype=out.dtype)
        for c in range(C):
            cw = c if Cw > 1 else 0
            period = periods[c]
            for i in range(h):
                row = image[b, c, y * sy + i * dy]
                for j in range(w):
                    weight = weights[bw, tw, cw, i, j]
                    if weight == 0:
                        continue
                    v = templates[bk, t, c, i, j]
                    off = j * dx
                    for x in range(Wo):
                        d = _wrapped(row[x * sx + off] - v, period)
                        acc[x] += weight * (abs(d) if power == 1 else d * d)
        out[b, t, y, :] = acc


@numba.njit(parallel=True, cache=True)
def distance_backward(image, templates, weights, periods, power, sy, sx, dy, dx, grad, grad_image, grad_templates):
    """Gradients of Σ w·|wrap(I − T)|^p. grad_templates is [B, T, C, h, w] (summed over B by the caller).

    One task per (image, channel): each task owns its slice of grad_image and grad_templates, so no two threads
    ever write the same element.
    """
    B, C = image.shape[0], image.shape[1]
    Bk, T, h, w = templates.shape[0], templates.shape[1], templates.shape[3], templates.shape[4]
    Bw, Tw, Cw = weights.shape[0], weights.shape[1], weights.shape[2]
    Ho, Wo = grad.shape[2], grad.shape[3]
    for task in numba.prange(B * C):
        b = task // C
        c = task % C
        bk, bw, cw = (b if Bk > 1 else 0), (b if Bw > 1 else 0), (c if Cw > 1 else 0)
        period = periods[c]
        for t in range(T):
            tw = t if Tw > 1 else 0
            for i in range(h):
                for j in range(w):
                    weight = weights[bw, tw, cw, i, j]
                    if weight == 0:
                        continue
                    v = templates[bk, t, c, i, j]
                    off = j * dx
                    total = 0.0
                    for y in range(Ho):
                        row = image[b, c, y * sy + i * dy]
                        grow = grad_image[b, c, y * sy + i * dy]
                        g = grad[b, t, y]
                        for x in range(Wo):
                            d = _wrapped(row[x * sx + off] - v, period)
                            slope = np.sign(d) if power == 1 else 2.0 * d
                            s = slope * g[x] * weight
                            grow[x * sx + off] += s
                            total += s
                    grad_templates[b, t, c, i, j] -= total
