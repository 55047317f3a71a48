/* spindle bench: collect cells, then print the table, the JSON lines and
 * the SVG chart from the same data.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <string.h>

#include "bench.h"

#define MAX_RESULTS 1024
#define MAX_REPS 64

typedef struct result {
    char row[48], param[32], metric[32], impl[40], note[96];
    int kind, n;
    double v[MAX_REPS], med, min, max;
} result;

static result results[MAX_RESULTS];
static int n_results;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(const double *v, int n)
{
    double s[MAX_REPS];
    BENCH_CHECK(n > 0 && n <= MAX_REPS, "median of %d values", n);
    memcpy(s, v, n * sizeof *v);
    qsort(s, n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

void result_add(const char *row, const char *param, const char *metric,
                const char *impl, int kind, const double *v, int n,
                const char *note)
{
    BENCH_CHECK(n_results < MAX_RESULTS && n > 0 && n <= MAX_REPS,
                "too many results");
    result *r = &results[n_results++];
    snprintf(r->row, sizeof r->row, "%s", row);
    snprintf(r->param, sizeof r->param, "%s", param ? param : "");
    snprintf(r->metric, sizeof r->metric, "%s", metric);
    snprintf(r->impl, sizeof r->impl, "%s", impl);
    snprintf(r->note, sizeof r->note, "%s", note ? note : "");
    r->kind = kind;
    r->n = n;
    memcpy(r->v, v, n * sizeof *v);
    r->med = bench_median(v, n);
    r->min = r->max = v[0];
    for (int i = 1; i < n; i++) {
        r->min = v[i] < r->min ? v[i] : r->min;
        r->max = v[i] > r->max ? v[i] : r->max;
    }
    /* Progress on stderr, so a long run shows it is alive. */
    fprintf(stderr, "  %-22s %-10s %-14s %-20s %12.1f\n", row, param ? param : "",
            metric, impl, r->med);
}

static bool same_group(const result *a, const result *b)
{
    return !strcmp(a->row, b->row) && !strcmp(a->param, b->param) &&
           !strcmp(a->metric, b->metric);
}

/* Rates (requests/s, MB/s, IOPS) are better higher; times, CPU and bytes
 * lower. */
static bool higher_is_better(const char *metric)
{
    size_t n = strlen(metric);
    return strstr(metric, "IOPS") || (n >= 2 && !strcmp(metric + n - 2, "/s"));
}

/* The best median among the peers, and among the floors, in the group of
 * r (the lowest, or for rates the highest); 0 when there is none. */
static void group_refs(const result *r, double *best_peer, double *floor_v)
{
    bool higher = higher_is_better(r->metric);
    *best_peer = 0;
    *floor_v = 0;
    for (int i = 0; i < n_results; i++) {
        const result *o = &results[i];
        if (!same_group(r, o))
            continue;
        double *ref = o->kind == KIND_PEER ? best_peer
                      : o->kind == KIND_FLOOR ? floor_v : NULL;
        if (ref && (*ref == 0 || (higher ? o->med > *ref : o->med < *ref)))
            *ref = o->med;
    }
}

/* Gather each group's cells together, groups in order of first appearance
 * (a row adds its metrics impl by impl). Stable, so impls keep their order. */
static void group_order(void)
{
    static result tmp[MAX_RESULTS];
    static bool done[MAX_RESULTS];
    int k = 0;
    memset(done, 0, sizeof done);
    for (int i = 0; i < n_results; i++) {
        if (done[i])
            continue;
        for (int j = i; j < n_results; j++)
            if (!done[j] && same_group(&results[i], &results[j])) {
                tmp[k++] = results[j];
                done[j] = true;
            }
    }
    memcpy(results, tmp, n_results * sizeof *results);
}

static void fmt_val(char *buf, size_t n, double v)
{
    if (v >= 100 || v == 0)
        snprintf(buf, n, "%.0f", v);
    else if (v >= 10)
        snprintf(buf, n, "%.1f", v);
    else
        snprintf(buf, n, "%.2f", v);
}

static void fmt_ratio(char *buf, size_t n, double v, double ref)
{
    if (ref > 0)
        snprintf(buf, n, "%.2fx", v / ref);
    else
        snprintf(buf, n, "-");
}

void results_print_table(FILE *f)
{
    const char *last_row = "";
    fprintf(f, "%-22s %-9s %-24s %10s %10s %10s %9s %8s\n", "row", "param", "impl",
            "median", "min", "max", "/bestpeer", "/floor");
    group_order();
    for (int i = 0; i < n_results; i++) {
        const result *r = &results[i];
        if (i == 0 || !same_group(r, &results[i - 1])) {
            if (strcmp(r->row, last_row))
                fputc('\n', f);
            fprintf(f, "%-22s %-9s [%s]\n", r->row, r->param, r->metric);
            last_row = r->row;
        }
        double bp, fl;
        group_refs(r, &bp, &fl);
        char med[24], mn[24], mx[24], rb[16], rf[16];
        fmt_val(med, sizeof med, r->med);
        fmt_val(mn, sizeof mn, r->min);
        fmt_val(mx, sizeof mx, r->max);
        fmt_ratio(rb, sizeof rb, r->med, r->kind == KIND_PEER || r->kind == KIND_SPINDLE ? bp : 0);
        fmt_ratio(rf, sizeof rf, r->med, r->kind == KIND_FLOOR ? 0 : fl);
        fprintf(f, "%-22s %-9s %-24s %10s %10s %10s %9s %8s%s%s\n", "", "", r->impl, med, mn,
                mx, rb, rf, r->note[0] ? "  " : "", r->note);
    }
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

void results_write_jsonl(const char *path, const char *machine_json)
{
    FILE *f = fopen(path, "w");
    BENCH_CHECK(f, "cannot write %s", path);
    fprintf(f, "%s\n", machine_json);
    static const char *kinds[] = {"spindle", "peer", "floor"};
    for (int i = 0; i < n_results; i++) {
        const result *r = &results[i];
        double bp, fl;
        group_refs(r, &bp, &fl);
        fputs("{\"row\":", f);
        json_str(f, r->row);
        fputs(",\"param\":", f);
        json_str(f, r->param);
        fputs(",\"metric\":", f);
        json_str(f, r->metric);
        fputs(",\"impl\":", f);
        json_str(f, r->impl);
        fprintf(f, ",\"kind\":\"%s\",\"median\":%.3f,\"min\":%.3f,\"max\":%.3f",
                kinds[r->kind], r->med, r->min, r->max);
        if (bp > 0)
            fprintf(f, ",\"vs_best_peer\":%.4f", r->med / bp);
        if (fl > 0)
            fprintf(f, ",\"vs_floor\":%.4f", r->med / fl);
        fputs(",\"reps\":[", f);
        for (int k = 0; k < r->n; k++)
            fprintf(f, "%s%.3f", k ? "," : "", r->v[k]);
        fputs("],\"note\":", f);
        json_str(f, r->note);
        fputs("}\n", f);
    }
    fclose(f);
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

/* One panel per (row, param, metric): horizontal bars of the medians on a
 * log scale (the cells of one row can differ a thousandfold), min-max as a
 * whisker; spindle red, peers blue, floors grey. */
void results_write_svg(const char *path, const char *machine)
{
    FILE *f = fopen(path, "w");
    BENCH_CHECK(f, "cannot write %s", path);
    const int W = 900, label_w = 230, bar_h = 14, gap = 4, head = 22;
    int h = 40;
    for (int i = 0; i < n_results; i++)
        h += bar_h + gap + ((i == 0 || !same_group(&results[i], &results[i - 1])) ? head + 10 : 0);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"11\">\n", W, h);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">spindle bench: ");
    xml_text(f, machine);
    fprintf(f, " (median bars on a log scale, min-max whiskers; lower is better, except rates: /s, IOPS)</text>\n");
    static const char *colour[] = {"#d62728", "#1f77b4", "#7f7f7f"};
    int y = 40;
    for (int i = 0; i < n_results;) {
        int j = i;
        double top = 0, bottom = 0;
        while (j < n_results && same_group(&results[i], &results[j])) {
            if (results[j].max > top)
                top = results[j].max;
            if (results[j].min > 0 && (bottom == 0 || results[j].min < bottom))
                bottom = results[j].min;
            j++;
        }
        /* Decades: from below the smallest to above the largest. */
        double lo = bottom > 0 ? floor(log10(bottom)) : 0, hi = top > 0 ? ceil(log10(top)) : 1;
        if (hi <= lo)
            hi = lo + 1;
        y += 10;
        fprintf(f, "<text x=\"10\" y=\"%d\" font-weight=\"bold\">", y + 12);
        xml_text(f, results[i].row);
        fputc(' ', f);
        xml_text(f, results[i].param);
        fputs(" [", f);
        xml_text(f, results[i].metric);
        fputs("]</text>\n", f);
        y += head;
        double scale = (W - label_w - 90) / (hi - lo);
#define X(v) (label_w + ((v) > 0 ? (log10(v) - lo) * scale : 0))
        for (int k = i; k < j; k++) {
            const result *r = &results[k];
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", label_w - 6,
                    y + bar_h - 3);
            xml_text(f, r->impl);
            fputs("</text>\n", f);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n",
                    label_w, y, X(r->med) - label_w, bar_h, colour[r->kind]);
            fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\" stroke=\"black\"/>\n",
                    X(r->min), X(r->max), y + bar_h / 2,
                    y + bar_h / 2);
            char v[24];
            fmt_val(v, sizeof v, r->med);
            fprintf(f, "<text x=\"%.1f\" y=\"%d\">%s</text>\n", X(r->max) + 4,
                    y + bar_h - 3, v);
            y += bar_h + gap;
        }
        i = j;
    }
    fputs("</svg>\n", f);
    fclose(f);
}
