/* A model of spindle's notify protocol (docs/notify-protocol.md).
 * SPDX-License-Identifier: MIT
 *
 * Processes: NOTIFIERS notifier threads, each publishing ROUNDS pieces of
 * work (a bottom half being scheduled, say), and the loop thread, which
 * runs iterations until it has nothing left to do.
 *
 * Shared variables, all read and written as single steps (Spin explores
 * every interleaving under sequential consistency; the barriers that real
 * hardware needs are documented in docs/notify-protocol.md):
 *   pending    work published by notifiers and not yet consumed by the loop
 *   notified   "a wake-up was requested since the loop last accepted one"
 *   notify_me  "the loop is about to sleep, or sleeping, in the kernel"
 *   event      the context's eventfd: readable (1) or not (0)
 *
 * The property: the loop never sleeps forever while published work is not
 * consumed. The loop's sleep is a guard that only an eventfd write can
 * open, plus one escape that opens when every notifier has finished and
 * nothing is left to consume (a sleep that nothing needs to end). If a
 * wake-up is lost, the loop stays blocked at the guard with pending > 0
 * after every notifier has finished: no process can move and the loop is
 * not at its end, which Spin reports as an invalid end state. The
 * assertion at the end checks that every piece of work was consumed.
 *
 * EMBEDDED: the loop is a host loop driving the context through
 * spindle_prepare / its own sleep / spindle_check / spindle_dispatch
 * (src/embed.c). The host sleeps on the embedding set, which holds the
 * eventfd among other fds: other sources may end its sleep (at most
 * HOST_WAKES times, so that a lost wake-up still shows as a loop stuck for
 * good); after a sleep the host may skip check and dispatch altogether (GLib
 * does when a source of higher priority is ready), leaving the announcement
 * up until its next prepare; check withdraws the announcement and may find
 * nothing to dispatch; dispatch withdraws too (hosts may call it without
 * check), then accepts and consumes.
 *
 * Broken variants, selected with spin -D...:
 *   BROKEN_LOOP      the loop announces its sleep and goes to sleep
 *                    without re-checking `notified` (with EMBEDDED: prepare
 *                    does)
 *   BROKEN_NOTIFIER  a notifier reads `notify_me` before it publishes its
 *                    work and sets `notified`
 *   BROKEN_ACCEPT    the loop consumes the work before it clears `notified`
 *   BROKEN_CHECK     (EMBEDDED) check accepts the wake-up (clears
 *                    `notified`) but dispatches only if the host saw the
 *                    eventfd readable
 * Each must make Spin find a lost wake-up.
 */

#ifndef NOTIFIERS
#define NOTIFIERS 2
#endif
#ifndef ROUNDS
#define ROUNDS 3
#endif
#ifndef HOST_WAKES
#define HOST_WAKES 2
#endif

byte pending = 0;     /* published, not yet consumed */
byte consumed = 0;    /* consumed by the loop, in total */
byte finished = 0;    /* notifiers that have returned for good */
bit notified = 0;
bit notify_me = 0;
bit event = 0;

proctype notifier()
{
    byte round = 0;
#ifdef BROKEN_NOTIFIER
    bit saw_notify_me;
#endif

    do
    :: round < ROUNDS ->
#ifdef BROKEN_NOTIFIER
        /* Wrong: the decision to write the eventfd is taken before the
         * work is visible; the loop can announce, re-check `notified`
         * (still false) and sleep in between. */
        saw_notify_me = notify_me;
        pending++;
        notified = 1;
        if
        :: saw_notify_me -> event = 1
        :: else -> skip
        fi;
#else
        pending++;          /* publish the work */
        notified = 1;       /* then request a wake-up */
        /* (full barrier: pairs with the loop's barrier after notify_me) */
        if
        :: notify_me -> event = 1   /* the loop may be asleep: write the eventfd */
        :: else -> skip             /* the loop will see `notified` or the work */
        fi;
#endif
        round++
    :: else -> break
    od;
    finished++
}

#ifndef EMBEDDED
proctype loop()
{
    do
    :: /* Step 1: decide whether to sleep. Work already visible means a zero
        * timeout: a non-blocking iteration, no announcement. The loop may
        * also decide to sleep whatever it saw (its view of the work may be
        * stale); the protocol must be safe either way. */
        if
        :: pending > 0 -> skip
        :: true ->
            notify_me = 1;      /* announce the sleep */
            /* (full barrier: pairs with the notifier's barrier after
             * `notified`) */
#ifdef BROKEN_LOOP
            /* Wrong: no re-check of `notified` after the announcement. */
            if
            :: event == 1 -> skip
            :: finished == NOTIFIERS && pending == 0 -> goto done
            fi
#else
            if
            :: notified -> skip     /* a wake-up is already requested */
            :: else ->
                /* Sleep in the kernel until the eventfd is readable. */
                if
                :: event == 1 -> skip
                :: finished == NOTIFIERS && pending == 0 -> goto done
                fi
            fi
#endif
        fi;
        /* Withdraw the announcement and accept the wake-up. */
        notify_me = 0;
        event = 0;              /* the context's notifier handler drains the eventfd */
#ifdef BROKEN_ACCEPT
        /* Wrong: work published between the consumption and the clearing
         * of `notified` is left behind with its wake-up request erased. */
        d_step { consumed = consumed + pending; pending = 0 };
        notified = 0
#else
        notified = 0;
        /* (full barrier: orders the clear before the reads of the work) */
        /* Consume everything published so far (an atomic exchange of the
         * bottom-half list in the implementation). */
        d_step { consumed = consumed + pending; pending = 0 }
#endif
    od;
done:
    assert(pending == 0 && consumed == NOTIFIERS * ROUNDS)
}
#else
/* A host loop around spindle_prepare/check/dispatch. */
proctype loop()
{
    byte wakes = HOST_WAKES;  /* the host's other sources */
    bit saw;                  /* check's view: the host saw the eventfd */

    do
    :: /* spindle_prepare: a zero timeout when work is visible (no
        * announcement; the host dispatches at once), else, or whatever it
        * saw (a stale view), announce and re-check. */
        if
        :: pending > 0 -> goto dispatch
        :: true -> skip
        fi;
        notify_me = 1;
        /* (full barrier, as in spindle_poll) */
#ifndef BROKEN_LOOP
        if
        :: notified -> goto dispatch   /* prepare returns 0 */
        :: else -> skip
        fi;
#endif
        /* The host sleeps on its fds: the embedding set (readable while
         * the eventfd is) and its own sources. */
        if
        :: event == 1 -> skip
        :: wakes > 0 -> wakes--
        :: finished == NOTIFIERS && pending == 0 -> goto done
        fi;
        saw = event;
        /* The host may skip check and dispatch (a source of higher priority
         * was ready): the announcement stays up until the next prepare. */
        if
        :: true -> skip
        :: true -> goto next
        fi;
        /* spindle_check: withdraw, then look for work. */
        notify_me = 0;
#ifdef BROKEN_CHECK
        /* Wrong: check accepts, and dispatches only for the eventfd. */
        notified = 0;
        if
        :: saw -> goto dispatch
        :: else -> goto next
        fi;
#else
        if
        :: saw || notified || pending > 0 -> goto dispatch
        :: else -> goto next    /* nothing to dispatch */
        fi;
#endif
dispatch:
        /* spindle_dispatch: withdraw (for hosts that skip check), accept,
         * drain the eventfd, consume. */
        notify_me = 0;
        notified = 0;
        /* (full barrier: orders the clear before the reads of the work) */
        event = 0;
        d_step { consumed = consumed + pending; pending = 0 };
next:
        skip
    od;
done:
    assert(pending == 0 && consumed == NOTIFIERS * ROUNDS)
}
#endif

init {
    byte i = 0;
    atomic {
        do
        :: i < NOTIFIERS -> run notifier(); i++
        :: else -> break
        od;
        run loop()
    }
}
