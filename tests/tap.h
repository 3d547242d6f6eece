/*
 * tests/tap.h - a few lines of TAP for the C test programs.
 *
 * Each ok()/not-ok line is one test case for ./shop test's count.  Usage:
 *   tap_check(cond, "what a user would check: %d", v);
 *   return tap_done();   // exit status: 0 only if every check passed
 */
#ifndef SHOP_TESTS_TAP_H
#define SHOP_TESTS_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap__n, tap__failed;

__attribute__((format(printf, 2, 3), unused)) static int tap_check(int cond, const char *fmt, ...)
{
    va_list ap;
    printf("%s %d - ", cond ? "ok" : "not ok", ++tap__n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!cond)
        tap__failed++;
    return cond;
}

__attribute__((format(printf, 1, 2), unused)) static void tap_diag(const char *fmt, ...)
{
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

__attribute__((unused)) static int tap_done(void)
{
    printf("1..%d\n", tap__n);
    fflush(stdout);
    return tap__failed ? 1 : 0;
}

#endif
