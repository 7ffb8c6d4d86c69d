import tally

# The client file is TALLY_CONFIG's (else ~/.config/tally/client.toml), or config="...".
try:
    with tally.checkout("vray") as lease:   # heartbeated on the client's own thread
        for frame in range(1, 11):
            lease.check()                    # raises tally.LeaseLost if the server ended it
            print(f"rendering frame {frame} under lease {lease.id[:8]}")
except tally.NoSeat as refused:
    print(f"no seat of vray is free: {refused.message}")
