"""numba kernels of the fused distance reduction Σ w·|I − T|^p (p = 1 or 2), forward and backward.

Imported only by the numba engine. Every kernel is compiled once per dtype and cached on disk (``cache=True``),
so a new process loads machine code instead of recompiling. Of fastmath only contraction is on (``_CONTRACT``):
(I − T)² + acc becomes one fused multiply-add, rounded once (more accurate, not less), which halves the adds that
bound the squared differences; the rest stays off, since it would let LLVM assume that no NaN exists, and a NaN
pixel must still reach exactly the windows that contain it.

Layouts: image [B, C, Hp, Wp], templates [Bk, T, C, h, w], weights [Bw, Tw, Cw, h, w], periods [C] (0 where a
channel is not circular), out and grad [B, T, H', W']. Bk, Bw ∈ {1, B}; Tw ∈ {1, T}; Cw ∈ {1, C}.
"""

from __future__ import annotations

import numba
import numpy as np

_CONTRACT = {"contract"}  # fused multiply-add only: no assumption about NaN, infinities or reassociation
_TEMPLATES_PER_PASS = 4  # templates sharing each image load; with 4 template columns, 16 abs-diffs per load


@numba.njit(inline="always", fastmath=_CONTRACT)
def _accumulate4(a0, a1, a2, a3, p0, p1, p2, p3, v0, v1, v2, v3, power):
    """a_k += Σ_m |p_m − v_k[m]|^power over four image columns p_m and four templates' values v_k."""
    n = a0.shape[0]
    if power == 1:
        for x in range(n):
            q0, q1, q2, q3 = p0[x], p1[x], p2[x], p3[x]
            a0[x] += abs(q0 - v0[0]) + abs(q1 - v0[1]) + abs(q2 - v0[2]) + abs(q3 - v0[3])
            a1[x] += abs(q0 - v1[0]) + abs(q1 - v1[1]) + abs(q2 - v1[2]) + abs(q3 - v1[3])
            a2[x] += abs(q0 - v2[0]) + abs(q1 - v2[1]) + abs(q2 - v2[2]) + abs(q3 - v2[3])
            a3[x] += abs(q0 - v3[0]) + abs(q1 - v3[1]) + abs(q2 - v3[2]) + abs(q3 - v3[3])
    else:  # with contraction, e1² + e0² … folds into fused multiply-adds: one add per four differences remains
        for x in range(n):
            q0, q1, q2, q3 = p0[x], p1[x], p2[x], p3[x]
            e0, e1, e2, e3 = q0 - v0[0], q1 - v0[1], q2 - v0[2], q3 - v0[3]
            a0[x] += e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3
            e0, e1, e2, e3 = q0 - v1[0], q1 - v1[1], q2 - v1[2], q3 - v1[3]
            a1[x] += e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3
            e0, e1, e2, e3 = q0 - v2[0], q1 - v2[1], q2 - v2[2], q3 - v2[3]
            a2[x] += e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3
            e0, e1, e2, e3 = q0 - v3[0], q1 - v3[1], q2 - v3[2], q3 - v3[3]
            a3[x] += e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3


@numba.njit(parallel=True, cache=True, fastmath=_CONTRACT)
def distance_plain(image, templates, power, sy, sx, dy, dx, out):
    """Unweighted, non-circular Σ |I − T|^p for templates 0 .. 4·(T // 4): four templates and four template
    columns per pass over an image row, so each image load feeds 16 differences. Columns left over after the last
    group of four are handled one at a time; templates left over go to the wide kernel (:func:`_plain_wide`).
    """
    B, C = image.shape[0], image.shape[1]
    Bk, T, h, w = templates.shape[0], templates.shape[1], templates.shape[3], templates.shape[4]
    Ho, Wo = out.shape[2], out.shape[3]
    span = (Wo - 1) * sx + 1
    groups = T // _TEMPLATES_PER_PASS
    for task in numba.prange(B * groups * Ho):
        b = task // (groups * Ho)
        g = (task // Ho) % groups
        y = task % Ho
        bk = b if Bk > 1 else 0
        t0 = g * _TEMPLATES_PER_PASS
        ta, tb, tc, td = t0, t0 + 1, t0 + 2, t0 + 3
        a0 = np.zeros(Wo, dtype=out.dtype)
        a1 = np.zeros(Wo, dtype=out.dtype)
        a2 = np.zeros(Wo, dtype=out.dtype)
        a3 = np.zeros(Wo, dtype=out.dtype)
        for c in range(C):
            for i in range(h):
                row = image[b, c, y * sy + i * dy]
                ra, rb = templates[bk, ta, c, i], templates[bk, tb, c, i]
                rc, rd = templates[bk, tc, c, i], templates[bk, td, c, i]
                j = 0
                while j + 4 <= w:
                    o0, o1, o2, o3 = j * dx, (j + 1) * dx, (j + 2) * dx, (j + 3) * dx
                    va, vb, vc, vd = ra[j : j + 4], rb[j : j + 4], rc[j : j + 4], rd[j : j + 4]
                    if sx == 1:
                        _accumulate4(
                            a0,
                            a1,
                            a2,
                            a3,
                            row[o0 : o0 + Wo],
                            row[o1 : o1 + Wo],
                            row[o2 : o2 + Wo],
                            row[o3 : o3 + Wo],
                            va,
                            vb,
                            vc,
                            vd,
                            power,
                        )
                    else:
                        _accumulate4(
                            a0,
                            a1,
                            a2,
                            a3,
                            row[o0 : o0 + span : sx],
                            row[o1 : o1 + span : sx],
                            row[o2 : o2 + span : sx],
                            row[o3 : o3 + span : sx],
                            va,
                            vb,
                            vc,
                            vd,
                            power,
                        )
                    j += 4
                while j < w:
                    off = j * dx
                    v0, v1, v2, v3 = ra[j], rb[j], rc[j], rd[j]
                    for x in range(Wo):
                        p = row[x * sx + off]
                        if power == 1:
                            a0[x] += abs(p - v0)
                            a1[x] += abs(p - v1)
                            a2[x] += abs(p - v2)
                            a3[x] += abs(p - v3)
                        else:
                            a0[x] += (p - v0) * (p - v0)
                            a1[x] += (p - v1) * (p - v1)
                            a2[x] += (p - v2) * (p - v2)
                            a3[x] += (p - v3) * (p - v3)
                    j += 1
        out[b, t0, y, :] = a0
        out[b, t0 + 1, y, :] = a1
        out[b, t0 + 2, y, :] = a2
        out[b, t0 + 3, y, :] = a3


@numba.njit(inline="always", fastmath=_CONTRACT)
def _accumulate_taps8(acc, plane, offsets, values, k, power):
    """acc += Σ_m |plane[s_m : s_m + n] − v_m|^power over the eight taps k .. k + 7 (n = len(acc))."""
    n = acc.shape[0]
    s0, s1, s2, s3 = offsets[k], offsets[k + 1], offsets[k + 2], offsets[k + 3]
    s4, s5, s6, s7 = offsets[k + 4], offsets[k + 5], offsets[k + 6], offsets[k + 7]
    p0, p1, p2, p3 = plane[s0 : s0 + n], plane[s1 : s1 + n], plane[s2 : s2 + n], plane[s3 : s3 + n]
    p4, p5, p6, p7 = plane[s4 : s4 + n], plane[s5 : s5 + n], plane[s6 : s6 + n], plane[s7 : s7 + n]
    v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
    v4, v5, v6, v7 = values[k + 4], values[k + 5], values[k + 6], values[k + 7]
    if power == 1:
        for x in range(n):
            near = (abs(p0[x] - v0) + abs(p1[x] - v1)) + (abs(p2[x] - v2) + abs(p3[x] - v3))
            far = (abs(p4[x] - v4) + abs(p5[x] - v5)) + (abs(p6[x] - v6) + abs(p7[x] - v7))
            acc[x] += near + far
    else:
        for x in range(n):
            e0, e1, e2, e3 = p0[x] - v0, p1[x] - v1, p2[x] - v2, p3[x] - v3
            e4, e5, e6, e7 = p4[x] - v4, p5[x] - v5, p6[x] - v6, p7[x] - v7
            acc[x] += ((e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3)) + ((e4 * e4 + e5 * e5) + (e6 * e6 + e7 * e7))


@numba.njit(inline="always")
def _wide_tasks(out, t_start, band):
    """(templates, bands, tasks) of the wide kernel: one task per image, template and band of output rows."""
    count = out.shape[1] - t_start
    bands = (out.shape[2] + band - 1) // band
    return count, bands, out.shape[0] * count * bands


@numba.njit(inline="always", fastmath=_CONTRACT)
def _wide_task(task, planes, values, offsets, t_start, power, Wq, band, out):
    """One task of :func:`distance_plain_wide`."""
    count, bands, _ = _wide_tasks(out, t_start, band)
    C, Bk, taps = planes.shape[1], values.shape[0], values.shape[3]
    Ho, Wo = out.shape[2], out.shape[3]
    b = task // (count * bands)
    t = t_start + (task // bands) % count
    y0 = (task % bands) * band
    rows = min(band, Ho - y0)
    bk = b if Bk > 1 else 0
    acc = np.zeros((rows - 1) * Wq + Wo, dtype=out.dtype)
    for c in range(C):
        plane = planes[b, c, y0 * Wq :]
        v = values[bk, t, c]
        k = 0
        while k + 8 <= taps:
            _accumulate_taps8(acc, plane, offsets, v, k, power)
            k += 8
        while k < taps:
            run, u = plane[offsets[k] : offsets[k] + acc.shape[0]], v[k]
            for x in range(acc.shape[0]):
                d = run[x] - u
                acc[x] += abs(d) if power == 1 else d * d
            k += 1
    for r in range(rows):
        out[b, t, y0 + r, :] = acc[r * Wq : r * Wq + Wo]


@numba.njit(parallel=True, cache=True, fastmath=_CONTRACT)
def distance_plain_wide(planes, values, offsets, t_start, power, Wq, band, out):
    """Σ |I − T|^p for templates t_start .. T − 1, one template per pass, in bands of output rows on threads.

    ``planes`` [B, C, P·Hq·Wq] holds each image as P phase planes of Hq × Wq, flattened (the image split by row
    and column residue modulo the stride; P = 1 and no copy at stride 1). The output is computed Wq columns
    wide, so template tap k adds |plane − v_k| over one contiguous run that starts at ``offsets[k]`` plus the
    band's first row, whatever the stride and dilation: no loop remainder per output row, and eight taps share
    each pass over the accumulator. The W' … Wq − 1 surplus columns are dropped; the last row of a band stops at
    W', which keeps every read inside its plane. values [Bk, T, C, h·w], out [B, T, H', W'].
    """
    for task in numba.prange(_wide_tasks(out, t_start, band)[2]):
        _wide_task(task, planes, values, offsets, t_start, power, Wq, band, out)


@numba.njit(cache=True, fastmath=_CONTRACT)
def distance_plain_wide_serial(planes, values, offsets, t_start, power, Wq, band, out):
    """:func:`distance_plain_wide` on one thread: below a few million differences, starting threads costs more
    than it saves. (A separate function, not a second dispatcher of the same one: numba's disk cache keys
    compiled code by function and signature, not by the parallel flag, so two dispatchers of one function would
    load each other's machine code.)
    """
    for task in range(_wide_tasks(out, t_start, band)[2]):
        _wide_task(task, planes, values, offsets, t_start, power, Wq, band, out)


@numba.njit(cache=True)
def split_phases(image, sy, sx, planes):
    """planes [B, C, sy, sx, Hq, Wq] ← image [B, C, Hp, Wp] split by row and column residue (zeros past the end)."""
    B, C, Hp, Wp = image.shape
    for b in range(B):
        for c in range(C):
            for ry in range(sy):
                for rx in range(sx):
                    for yq in range((Hp - ry + sy - 1) // sy):
                        src, dst = image[b, c, yq * sy + ry], planes[b, c, ry, rx, yq]
                        for xq in range((Wp - rx + sx - 1) // sx):
                            dst[xq] = src[xq * sx + rx]


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
