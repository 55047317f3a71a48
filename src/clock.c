/* The public clock. SPDX-License-Identifier: MIT
 *
 * Timer deadlines are absolute values of these clocks. The loop's own
 * measurements (busy polling, window adaptation) use sp_now() in ctx.h,
 * inline because busy polling reads it on every spin.
 */
#include "ctx.h"

#include <errno.h>

static const clockid_t clock_ids[] = {
    [SPINDLE_CLOCK_MONOTONIC] = CLOCK_MONOTONIC,
    [SPINDLE_CLOCK_REALTIME] = CLOCK_REALTIME,
};

int64_t spindle_now_ns(spindle_clock clock)
{
    if ((unsigned)clock > SPINDLE_CLOCK_REALTIME) {
        return -EINVAL;
    }
    return sp_clock_ns(clock_ids[clock]);
}
