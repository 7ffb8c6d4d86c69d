/* libtally from several threads at once, and a lost callback that frees its own lease.
 * Four threads share one client and each checks out and releases a seat of "vray" 25
 * times (the pool has fewer seats, so some wait), then prints "threads ok" or what failed.
 * Then it holds one lease whose callback frees that very lease, prints "holding ID", and
 * when the server ends the lease prints "freed REASON" and exits 0. */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>

#include "tally.h"

#define THREADS 4
#define ROUNDS 25

static TallyClient *client;
static sem_t freed;
static TallyEndReason freed_reason;

static void *work(void *failure) {
    for (int round = 0; round < ROUNDS; round++) {
        TallyLease *lease = NULL;
        TallyCode code = tally_checkout(client, "vray", 1, 30000, &lease);
        if (code == TALLY_CODE_OK && tally_lease_lost(lease) != TALLY_END_REASON_NONE) {
            code = TALLY_CODE_PANIC;
        }
        if (code == TALLY_CODE_OK) {
            code = tally_lease_release(lease);
        }
        if (code != TALLY_CODE_OK) {
            snprintf(failure, 512, "%s %s", tally_code_str(code), tally_last_error());
            return NULL;
        }
    }
    return NULL;
}

static void free_on_lost(TallyEndReason reason, void *lease) {
    tally_lease_free(lease);
    freed_reason = reason;
    sem_post(&freed);
}

int main(void) {
    TallyCode code = tally_connect(NULL, &client);
    if (code != TALLY_CODE_OK) {
        printf("error %s %s\n", tally_code_str(code), tally_last_error());
        return 1;
    }
    pthread_t threads[THREADS];
    char failures[THREADS][512] = {{0}};
    for (int i = 0; i < THREADS; i++) {
        pthread_create(&threads[i], NULL, work, failures[i]);
    }
    int failed = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        if (failures[i][0] != '\0') {
            printf("thread %d failed: %s\n", i, failures[i]);
            failed = 1;
        }
    }
    if (failed) {
        return 1;
    }
    printf("threads ok\n");
    fflush(stdout);

    TallyLease *lease = NULL;
    code = tally_checkout(client, "vray", 1, 0, &lease);
    if (code != TALLY_CODE_OK) {
        printf("error %s %s\n", tally_code_str(code), tally_last_error());
        return 1;
    }
    sem_init(&freed, 0, 0);
    tally_lease_on_lost(lease, free_on_lost, lease);
    printf("holding %s\n", tally_lease_id(lease));
    fflush(stdout);
    while (sem_wait(&freed) != 0) {
    }
    printf("freed %s\n", tally_end_reason_str(freed_reason));
    tally_client_free(client);
    return 0;
}
