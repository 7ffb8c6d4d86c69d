#include <stdio.h>
#include <tally.h>

int main(void) {
    TallyClient *client = NULL;
    TallyLease *lease = NULL;
    if (tally_connect(NULL, &client) != TALLY_CODE_OK            /* the file $TALLY_CONFIG names */
        || tally_checkout(client, "vray", 1, 0, &lease) != TALLY_CODE_OK) { /* e.g. no_seat */
        fprintf(stderr, "no license: %s\n", tally_last_error());
        return 1;
    }
    printf("holding %s\n", tally_lease_id(lease));  /* ... work: it heartbeats by itself ... */
    if (tally_lease_lost(lease) != TALLY_END_REASON_NONE) fprintf(stderr, "license lost\n");
    tally_lease_release(lease);
    tally_client_free(client);
    return 0;
}
