/* A C program the test drives through libtally: one command a line on stdin, one event a
 * line on stdout (the lost callback's lines come from the library's thread).
 *   checkout FEATURE SEATS WAIT_MS -> lease SLOT ID FEATURE SEATS | error CODE MESSAGE
 *   lost SLOT     -> lost SLOT REASON           watch SLOT -> watching SLOT, later
 *   release SLOT  -> released SLOT | error ...                  callback SLOT REASON
 *   status FEATURE -> status FEATURE in_use=N available=N total=N
 *   borrow FEATURE SECS -> borrowed FEATURE EXPIRES_AT_MS | error ...
 *   return FEATURE -> returned FEATURE SEATS | error ...
 *   verify FEATURE -> verify FEATURE valid|invalid REASON (offline)
 *   connect_to SERVER CA_FILE TOKEN FEATURE -> connected_to FEATURE in_use=N (a second
 *                 client, without a client file, asks for the feature's status and goes)
 *   quit          -> bye (after freeing every lease and the client) */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

#define SLOTS 16

static TallyLease *leases[SLOTS];

static void say(const char *format, ...) {
    va_list args;
    va_start(args, format);
    flockfile(stdout);
    vprintf(format, args);
    putchar('\n');
    fflush(stdout);
    funlockfile(stdout);
    va_end(args);
}

static void fail(TallyCode code) {
    say("error %s %s", tally_code_str(code), tally_last_error());
}

static void on_lost(TallyEndReason reason, void *slot) {
    say("callback %d %s", (int)(intptr_t)slot, tally_end_reason_str(reason));
}

static int slot_of(const char *text) {
    int slot = atoi(text);
    return slot >= 0 && slot < SLOTS ? slot : 0;
}

int main(void) {
    TallyClient *client = NULL;
    TallyCode code = tally_connect(NULL, &client);
    if (code != TALLY_CODE_OK) {
        fail(code);
        return 1;
    }
    say("connected %s", tally_version());
    char line[512];
    int next = 0;
    while (fgets(line, sizeof line, stdin)) {
        char command[32] = "", arg[256] = "";
        unsigned long long first = 0, second = 0;
        if (sscanf(line, "%31s %255s %llu %llu", command, arg, &first, &second) < 1) {
            continue;
        }
        if (strcmp(command, "checkout") == 0) {
            TallyLease *lease = NULL;
            code = tally_checkout(client, arg, (uint32_t)first, second, &lease);
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else if (next == SLOTS) {
                say("error full no slot left");
            } else {
                leases[next] = lease;
                say("lease %d %s %s %u", next, tally_lease_id(lease), tally_lease_feature(lease),
                    tally_lease_seats(lease));
                next++;
            }
        } else if (strcmp(command, "lost") == 0) {
            int slot = slot_of(arg);
            say("lost %d %s", slot, tally_end_reason_str(tally_lease_lost(leases[slot])));
        } else if (strcmp(command, "watch") == 0) {
            int slot = slot_of(arg);
            code = tally_lease_on_lost(leases[slot], on_lost, (void *)(intptr_t)slot);
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("watching %d", slot);
            }
        } else if (strcmp(command, "release") == 0) {
            int slot = slot_of(arg);
            code = tally_lease_release(leases[slot]);
            leases[slot] = NULL;
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("released %d", slot);
            }
        } else if (strcmp(command, "status") == 0) {
            TallyFeatureStatus status;
            code = tally_status(client, arg, &status);
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("status %s in_use=%u available=%u total=%u", arg, status.in_use,
                    status.available, status.total);
            }
        } else if (strcmp(command, "borrow") == 0) {
            int64_t expires_at_ms = 0;
            code = tally_borrow(client, arg, 1, first, &expires_at_ms);
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("borrowed %s %lld", arg, (long long)expires_at_ms);
            }
        } else if (strcmp(command, "return") == 0) {
            uint32_t seats = 0;
            code = tally_return(client, arg, &seats);
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("returned %s %u", arg, seats);
            }
        } else if (strcmp(command, "verify") == 0) {
            bool valid = false;
            char *reason = NULL;
            code = tally_verify_offline(NULL, arg, &valid, &reason);
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("verify %s %s %s", arg, valid ? "valid" : "invalid", reason);
            }
            tally_string_free(reason);
        } else if (strcmp(command, "connect_to") == 0) {
            char server[256] = "", ca[512] = "", token[256] = "", feature[64] = "";
            sscanf(line, "%*s %255s %511s %255s %63s", server, ca, token, feature);
            const char *servers[] = {server};
            TallyClient *other = NULL;
            TallyFeatureStatus status;
            code = tally_connect_to(servers, 1, ca, token, &other);
            if (code == TALLY_CODE_OK) {
                code = tally_status(other, feature, &status);
            }
            if (code != TALLY_CODE_OK) {
                fail(code);
            } else {
                say("connected_to %s in_use=%u", feature, status.in_use);
            }
            tally_client_free(other);
        } else if (strcmp(command, "quit") == 0) {
            break;
        } else {
            say("unknown %s", command);
        }
    }
    for (int slot = 0; slot < SLOTS; slot++) {
        tally_lease_free(leases[slot]);
    }
    tally_client_free(client);
    say("bye");
    return 0;
}
