/* A lock and a walker counter in one word: many walkers may traverse a
 * list while writers insert; a writer frees an unlinked node only while no
 * walker is inside, and walkers that arrive while such a writer holds the
 * lock wait for it. On Linux waiting is a futex; elsewhere it yields.
 * SPDX-License-Identifier: MIT
 *
 * The word holds the walker count times 4, plus the lock state in the low
 * two bits: 0 free, 1 held, 2 held with sleepers to wake on release.
 */
#ifndef SPINDLE_LOCKCNT_H
#define SPINDLE_LOCKCNT_H

#include <stdatomic.h>
#include <stdbool.h>

typedef struct sp_lockcnt {
    _Atomic unsigned word;
} sp_lockcnt;

static inline void sp_lockcnt_init(sp_lockcnt *lc)
{
    atomic_init(&lc->word, 0);
}

/* Walkers. */
void sp_lockcnt_inc(sp_lockcnt *lc);
void sp_lockcnt_dec(sp_lockcnt *lc);
/* Decrement; if that leaves no walker, take the lock and return true (the
 * caller may free unlinked nodes, then unlocks). */
bool sp_lockcnt_dec_and_lock(sp_lockcnt *lc);

/* Writers. */
void sp_lockcnt_lock(sp_lockcnt *lc);
void sp_lockcnt_unlock(sp_lockcnt *lc);
/* Number of walkers; meaningful to a lock holder deciding whether it may
 * free a node it unlinked. */
unsigned sp_lockcnt_count(sp_lockcnt *lc);

#endif
