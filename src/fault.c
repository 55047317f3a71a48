/* Fault injection counters (test builds only; see fault-hook.h).
 * SPDX-License-Identifier: MIT
 *
 * Counters are global, not per context: a failure point is "the nth
 * allocation the library makes", wherever it happens. Tests that walk
 * failure points run one scenario on one thread at a time.
 */
#include "fault.h"

#if SPINDLE_FAULT_INJECTION
#include <stdatomic.h>

static atomic_ulong seen[SPINDLE_FAULT_KINDS];
static atomic_ulong fail_at[SPINDLE_FAULT_KINDS];

void spindle_fault_arm(enum spindle_fault_kind kind, unsigned long nth)
{
    if ((unsigned)kind < SPINDLE_FAULT_KINDS) {
        atomic_store(&fail_at[kind], nth);
        atomic_store(&seen[kind], 0);
    }
}

unsigned long spindle_fault_seen(enum spindle_fault_kind kind)
{
    return (unsigned)kind < SPINDLE_FAULT_KINDS ? atomic_load(&seen[kind]) : 0;
}

bool sp_fault_fails(enum spindle_fault_kind kind)
{
    unsigned long n = atomic_fetch_add(&seen[kind], 1) + 1;
    return n == atomic_load(&fail_at[kind]);
}
#endif
