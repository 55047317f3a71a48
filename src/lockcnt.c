/* The lock+counter of lockcnt.h.
 * SPDX-License-Identifier: MIT
 *
 * Why a combined word rather than a mutex plus an atomic counter: a walker
 * must not start while a writer that saw no walkers is freeing a node, and a
 * writer must see the count and take the lock as one step. Keeping both in
 * one word makes each of those a single compare-and-swap, and a walker that
 * joins walkers already inside pays one uncontended atomic.
 */
#include "lockcnt.h"

#include <limits.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <sched.h>
#endif

#define LC_STEP 4u
#define LC_MASK 3u
#define LC_FREE 0u
#define LC_HELD 1u
#define LC_CONTENDED 2u

static void lc_sleep(sp_lockcnt *lc, unsigned seen)
{
#ifdef __linux__
    /* Returns at once if the word no longer equals `seen`. */
    syscall(SYS_futex, (unsigned *)&lc->word, FUTEX_WAIT_PRIVATE, seen, NULL,
            NULL, 0);
#else
    (void)lc;
    (void)seen;
    sched_yield();
#endif
}

static void lc_wake_all(sp_lockcnt *lc)
{
#ifdef __linux__
    syscall(SYS_futex, (unsigned *)&lc->word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
            NULL, 0);
#else
    (void)lc;
#endif
}

/* The lock is held in `seen`: flag that someone sleeps, then sleep until the
 * word changes. The caller re-reads the word and retries. */
static void lc_wait_unlock(sp_lockcnt *lc, unsigned seen)
{
    if ((seen & LC_MASK) == LC_HELD) {
        unsigned flagged = (seen & ~LC_MASK) | LC_CONTENDED;
        if (!atomic_compare_exchange_strong_explicit(&lc->word, &seen, flagged,
                                                     memory_order_relaxed,
                                                     memory_order_relaxed)) {
            return;
        }
        seen = flagged;
    }
    lc_sleep(lc, seen);
}

void sp_lockcnt_inc(sp_lockcnt *lc)
{
    unsigned v = atomic_load_explicit(&lc->word, memory_order_relaxed);
    for (;;) {
        /* Joining other walkers is always safe: a writer that saw them
         * defers its frees. Being the first walker is safe only while no
         * writer holds the lock, since that writer may be freeing. */
        if (v >= LC_STEP || (v & LC_MASK) == LC_FREE) {
            /* Acquire pairs with the writer's release in unlock(), so the
             * walk sees the list as the writer left it. */
            if (atomic_compare_exchange_weak_explicit(&lc->word, &v,
                                                      v + LC_STEP,
                                                      memory_order_acquire,
                                                      memory_order_relaxed)) {
                return;
            }
        } else {
            lc_wait_unlock(lc, v);
            v = atomic_load_explicit(&lc->word, memory_order_relaxed);
        }
    }
}

void sp_lockcnt_dec(sp_lockcnt *lc)
{
    /* Release: the walk's reads happen before a writer that then sees no
     * walker frees what was read. */
    atomic_fetch_sub_explicit(&lc->word, LC_STEP, memory_order_release);
}

bool sp_lockcnt_dec_and_lock(sp_lockcnt *lc)
{
    unsigned v = atomic_load_explicit(&lc->word, memory_order_relaxed);
    unsigned lock_state = LC_HELD;
    for (;;) {
        if (v >= 2 * LC_STEP) {
            if (atomic_compare_exchange_weak_explicit(&lc->word, &v,
                                                      v - LC_STEP,
                                                      memory_order_release,
                                                      memory_order_relaxed)) {
                return false;
            }
        } else if ((v & LC_MASK) == LC_FREE) {
            /* Last walker out and the lock in one step. */
            if (atomic_compare_exchange_weak_explicit(&lc->word, &v,
                                                      (v - LC_STEP) | lock_state,
                                                      memory_order_acq_rel,
                                                      memory_order_relaxed)) {
                return true;
            }
        } else {
            /* A writer holds the lock; while we still count as a walker it
             * frees nothing, so waiting for it cannot deadlock. */
            lc_wait_unlock(lc, v);
            lock_state = LC_CONTENDED;
            v = atomic_load_explicit(&lc->word, memory_order_relaxed);
        }
    }
}

void sp_lockcnt_lock(sp_lockcnt *lc)
{
    unsigned v = atomic_load_explicit(&lc->word, memory_order_relaxed);
    /* After sleeping once, take the lock as contended: other sleepers may
     * remain and the flag that says so must not be lost. */
    unsigned lock_state = LC_HELD;
    for (;;) {
        if ((v & LC_MASK) == LC_FREE) {
            if (atomic_compare_exchange_weak_explicit(&lc->word, &v,
                                                      v | lock_state,
                                                      memory_order_acquire,
                                                      memory_order_relaxed)) {
                return;
            }
        } else {
            lc_wait_unlock(lc, v);
            lock_state = LC_CONTENDED;
            v = atomic_load_explicit(&lc->word, memory_order_relaxed);
        }
    }
}

void sp_lockcnt_unlock(sp_lockcnt *lc)
{
    unsigned v = atomic_fetch_and_explicit(&lc->word, ~LC_MASK,
                                           memory_order_release);
    if ((v & LC_MASK) == LC_CONTENDED) {
        lc_wake_all(lc);
    }
}

unsigned sp_lockcnt_count(sp_lockcnt *lc)
{
    return atomic_load_explicit(&lc->word, memory_order_acquire) / LC_STEP;
}
