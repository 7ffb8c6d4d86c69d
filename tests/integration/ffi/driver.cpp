// The C++ twin of driver.c, through tally.hpp: the same commands and events. An error is
// printed with its code only when it arrives as the exception class meant for it, so a
// broken mapping shows as "error generic:CODE".
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "tally.hpp"

namespace {

std::mutex out;

void say(const std::string &line) {
    std::lock_guard<std::mutex> lock(out);
    std::cout << line << std::endl;
}

} // namespace

int main() {
    std::map<int, tally::Lease> leases;
    std::unique_ptr<tally::Client> client;
    try {
        client = std::make_unique<tally::Client>();
    } catch (const tally::Error &err) {
        say(std::string("error ") + err.code_str() + " " + err.what());
        return 1;
    }
    say(std::string("connected ") + tally_version());
    int next = 0;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream words(line);
        std::string command, arg;
        unsigned long long first = 0, second = 0;
        words >> command >> arg >> first >> second;
        int slot = std::atoi(arg.c_str());
        try {
            if (command == "checkout") {
                tally::Lease lease =
                    client->checkout(arg, static_cast<std::uint32_t>(first),
                                     std::chrono::milliseconds(second));
                std::ostringstream said;
                said << "lease " << next << " " << lease.id() << " " << lease.feature() << " "
                     << lease.seats();
                leases.emplace(next++, std::move(lease));
                say(said.str());
            } else if (command == "lost") {
                auto reason = leases.at(slot).lost();
                say("lost " + arg + " " + (reason ? tally::to_string(*reason) : "none"));
            } else if (command == "watch") {
                leases.at(slot).on_lost([slot](TallyEndReason reason) {
                    say("callback " + std::to_string(slot) + " " + tally::to_string(reason));
                });
                say("watching " + arg);
            } else if (command == "release") {
                tally::Lease lease = std::move(leases.at(slot));
                leases.erase(slot);
                lease.release();
                say("released " + arg);
            } else if (command == "status") {
                tally::FeatureStatus status = client->status(arg);
                say("status " + arg + " in_use=" + std::to_string(status.in_use) +
                    " available=" + std::to_string(status.available) +
                    " total=" + std::to_string(status.total));
            } else if (command == "borrow") {
                std::int64_t expires_at_ms = client->borrow(arg, std::chrono::seconds(first));
                say("borrowed " + arg + " " + std::to_string(expires_at_ms));
            } else if (command == "return") {
                say("returned " + arg + " " + std::to_string(client->return_borrow(arg)));
            } else if (command == "verify") {
                tally::Verdict verdict = tally::verify_offline(arg);
                say("verify " + arg + " " + (verdict.valid ? "valid " : "invalid ") +
                    verdict.reason);
            } else if (command == "connect_to") {
                std::string ca, token, feature;
                words.clear();
                words.str(line);
                words >> command >> arg >> ca >> token >> feature;
                tally::Client other({arg}, ca, token);
                say("connected_to " + feature +
                    " in_use=" + std::to_string(other.status(feature).in_use));
            } else if (command == "quit") {
                break;
            } else {
                say("unknown " + command);
            }
        } catch (const tally::NoSeat &err) {
            say(std::string("error ") + err.code_str() + " " + err.what());
        } catch (const tally::AccessDenied &err) {
            say(std::string("error ") + err.code_str() + " " + err.what());
        } catch (const tally::Unreachable &err) {
            say(std::string("error ") + err.code_str() + " " + err.what());
        } catch (const tally::Error &err) {
            bool has_class = err.code() == TALLY_CODE_NO_SEAT ||
                             err.code() == TALLY_CODE_UNREACHABLE ||
                             err.code() == TALLY_CODE_FORBIDDEN;
            say(std::string("error ") + (has_class ? "generic:" : "") + err.code_str() + " " +
                err.what());
        }
    }
    leases.clear();
    client.reset();
    say("bye");
    return 0;
}
