#include <iostream>
#include <tally.hpp>

int main() try {
    tally::Client client;                          // the client file $TALLY_CONFIG names
    tally::Lease lease = client.checkout("vray");  // throws tally::NoSeat when none is free
    std::cout << "holding " << lease.id() << "\n"; // ... work: it heartbeats by itself ...
    if (lease.lost()) std::cerr << "license lost\n";
    lease.release();                               // the destructor would check it in too
    return 0;
} catch (const tally::Error &err) {
    std::cerr << "no license (" << err.code_str() << "): " << err.what() << "\n";
    return 1;
}
