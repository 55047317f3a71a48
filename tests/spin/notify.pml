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
 * Broken variants, selected with spin -D...:
 *   BROKEN_LOOP      the loop announces its sleep and goes to sleep
 *                    without re-checking `notified`
 *   BROKEN_NOTIFIER  a notifier reads `notify_me` before it publishes its
 *                    work and sets `notified`
 *   BROKEN_ACCEPT    the loop consumes the work before it clears `notified`
 * Each must make Spin find a lost wake-up.
 */

#ifndef NOTIFIERS
#define NOTIFIERS 2
#endif
#ifndef ROUNDS
#define ROUNDS 3
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
