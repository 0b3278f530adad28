"""Numba kernels for `loaders.pack`: the same decisions as `_pack_reference`, on arrays.

The reference keeps pending samples in one sorted list; here they are grouped by size,
so each step costs O(log distinct sizes) (plus a walk over distinct sizes to close a
gap), independent of ``buffer``. All kernels are nopython and cached on disk.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def greedy_rows(counts, capacity, group, slots):
    """Next-fit in arrival order, restarting every ``group`` samples (see reference)."""
    rows = np.empty(counts.shape[0], np.int64)
    row, fill, used, group_left = -1, 0, 0, 0
    for i in range(counts.shape[0]):
        count = counts[i]
        if group_left == 0 or fill + count > capacity or used == slots:
            row, fill, used = row + 1, 0, 0
            if group_left == 0:
                group_left = group
        rows[i] = row
        fill += count
        used += 1
        group_left -= 1
    return rows


@njit(cache=True)
def first_fit_rows(counts, capacity, buffer, slots, max_wait):
    """Look-ahead first-fit-decreasing with gap closing, exact fills and a wait cap (see reference).

    The pending pool is grouped by size (sizes are whole tokens in 1..capacity):
    ``desc[:d]`` holds the distinct sizes present, descending; ``count[size]`` how many
    samples have it; ``head``/``tail``/``link`` chain one queue per size, oldest first.
    Every sample leaves from the head of its queue, so the oldest sample of a size is
    always the one taken, as in the reference. The helpers are closures because Numba
    inlines those, whereas array arguments to separate functions cost reference
    counting on every call (about 10x slower here). Inlining copies a closure into every
    call site, so each is called from as few sites as the logic allows: a fresh process's
    compile (bench/packing.py) went from about 9.7 s to 6 s when `heuristic_row` and `pop`
    lost their duplicate sites.
    """
    n = counts.shape[0]
    rows = np.full(n, -1, np.int64)
    desc = np.empty(min(capacity, buffer), np.int64)
    count = np.zeros(capacity + 1, np.int64)
    head = np.empty(capacity + 1, np.int64)
    tail = np.empty(capacity + 1, np.int64)
    link = np.empty(n, np.int64)
    members = np.empty(buffer, np.int64)
    reach = np.empty((min(capacity, buffer) + 1, capacity // 64 + 1), np.uint64)  # exact_fill's bit sets
    take = np.empty(min(capacity, buffer), np.int64)
    one = np.uint64(1)

    def at_most(d, limit):
        """Leftmost position in desc[:d] whose size is <= limit (d if none)."""
        lo, hi = 0, d
        while lo < hi:
            mid = (lo + hi) // 2
            if desc[mid] > limit:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def add(d, sample):
        """Queue a sample under its size, in index order; returns the new d."""
        size = counts[sample]
        if count[size] == 0:
            pos = at_most(d, size)
            for k in range(d, pos, -1):
                desc[k] = desc[k - 1]
            desc[pos] = size
            d += 1
            head[size] = sample
            tail[size] = sample
            link[sample] = -1
        elif tail[size] < sample:
            link[tail[size]] = sample
            link[sample] = -1
            tail[size] = sample
        else:  # a swapped-out member returns: only samples older than it go first
            prev, cur = -1, head[size]
            while cur < sample:
                prev, cur = cur, link[cur]
            link[sample] = cur
            if prev < 0:
                head[size] = sample
            else:
                link[prev] = sample
        count[size] += 1
        return d

    def pop(d, size):
        """Take the oldest pending sample of a size; returns (sample, new d)."""
        sample = head[size]
        head[size] = link[sample]
        count[size] -= 1
        if count[size] == 0:
            for k in range(at_most(d, size), d - 1):
                desc[k] = desc[k + 1]
            d -= 1
        return sample, d

    def best_pair(d, above, limit):
        """Sizes (a >= b) of the pair summing to the most in (above, limit]; (0, 0) if none.

        Walks distinct sizes only: a later sample of the same size never beats the first.
        """
        best, best_a, best_b = above, 0, 0
        if d == 0:
            return best_a, best_b
        partner = d  # leftmost position whose size fits next to the current a
        for first in range(at_most(d, limit - desc[d - 1]), d):
            a = desc[first]
            if 2 * a <= best:
                break
            while partner > 0 and desc[partner - 1] <= limit - a:
                partner -= 1
            if partner > first:
                b = desc[partner] if partner < d else 0
            elif count[a] >= 2:
                b = a
            else:
                b = desc[first + 1] if first + 1 < d else 0
            if b > 0 and a + b > best:
                best, best_a, best_b = a + b, a, b
        return best_a, best_b

    def heuristic_row(d, seed):
        """Build one row into members[:k]; returns (k, gap left, new d)."""
        k, gap, size = 0, capacity, counts[seed]  # the seed heads its queue: popped first
        while True:
            members[k], d = pop(d, size)
            gap -= size
            k += 1
            pos = at_most(d, gap)
            if k == slots or pos == d:
                break
            size = desc[pos]
        while 0 < gap and k < slots:
            gain, swap, pair_a, pair_b = 0, -1, 0, 0
            for j in range(k):
                size = counts[members[j]]
                a, b = best_pair(d, size + gain, size + gap)
                if a > 0:
                    gain, swap, pair_a, pair_b = a + b - size, j, a, b
                    if gain == gap:
                        break
            if swap < 0:
                break
            out = members[swap]
            for j in range(swap, k - 1):
                members[j] = members[j + 1]
            for slot, size in ((k - 1, pair_a), (k, pair_b)):  # one call site (see above)
                members[slot], d = pop(d, size)
            d = add(d, out)
            k += 1
            gap -= gain
        return k, gap, d

    def has(j, t):
        return (reach[j, t >> 6] >> np.uint64(t & 63)) & one

    def shift_or(j, by, words):
        """reach[j] |= reach[j] << by, on the first `words` words."""
        word, bit = by >> 6, np.uint64(by & 63)
        for w in range(words - 1, word - 1, -1):  # high words first: each reads lower ones
            shifted = reach[j, w - word] << bit
            if bit and w > word:
                shifted |= reach[j, w - word - 1] >> (np.uint64(64) - bit)
            reach[j, w] |= shifted

    def exact_fill(d, seed_size):
        """Samples per size (take[j] of desc[j]) filling capacity - seed_size exactly, the seed
        (the head of its queue) not counted; returns how many, or -1 if no fill is exact.
        reach[j] is the bit set of sums that sizes desc[j:] can make, up to the target."""
        target = capacity - seed_size
        words = target // 64 + 1
        reach[d, :words] = 0
        reach[d, 0] = one
        for j in range(d - 1, -1, -1):
            size = desc[j]
            reach[j, :words] = reach[j + 1, :words]
            copies = min(count[size] - (size == seed_size), target // size)
            batch = 1  # up to `copies` copies as batches of 1, 2, 4, ... and the rest: log2 shifts, same sums
            while copies > 0:
                step = min(batch, copies)
                shift_or(j, step * size, words)
                copies -= step
                batch *= 2
        if not has(0, target):
            return -1
        left = target
        used = 0
        for j in range(d):
            size = desc[j]
            k = min(count[size] - (size == seed_size), left // size)
            while not has(j + 1, left - k * size):
                k -= 1
            take[j] = k
            left -= k * size
            used += k
        return used

    def fill_row(d, seed):
        """One row into members[:k]: the heuristic row if full, else the exact fill if there is
        one within the slots, else the heuristic row again (see the reference); returns (k, new d)."""
        seed_size = counts[seed]
        exact_tried = False
        while True:
            k, gap, d = heuristic_row(d, seed)
            if gap == 0 or exact_tried:
                return k, d
            exact_tried = True
            for j in range(k):
                d = add(d, members[j])
            used = exact_fill(d, seed_size)
            if 0 <= used and used + 1 <= slots:
                break
        members[0], k = seed_size, 1  # the sizes to take, the seed's first; popping reshapes desc
        for j in range(d):
            members[k : k + take[j]] = desc[j]
            k += take[j]
        for j in range(k):
            members[j], d = pop(d, members[j])
        return k, d

    d = pending = arrived = oldest = n_rows = 0
    while arrived < n or pending > 0:
        while pending < buffer and arrived < n:
            d = add(d, arrived)
            arrived += 1
            pending += 1
        while pending > 0:
            while rows[oldest] >= 0:
                oldest += 1
            overdue = arrived - oldest > max_wait
            k, d = fill_row(d, oldest if overdue else head[desc[0]])
            for j in range(k):
                rows[members[j]] = n_rows
            n_rows += 1
            pending -= k
            if not overdue:
                break
    return rows


@njit(cache=True)
def row_layout(counts, rows, n_rows):
    """Token offset of each sample inside its row (index order) and tokens per row."""
    offset = np.empty(counts.shape[0], np.int64)
    fill = np.zeros(n_rows, np.int64)
    for i in range(counts.shape[0]):
        offset[i] = fill[rows[i]]
        fill[rows[i]] += counts[i]
    return offset, fill
