/* The pod sandbox's first process: sleeps, reaps the children it inherits,
 * and exits 0 on SIGTERM or SIGINT. Built static (image/build.sh). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {0}, child = {0};
    stop.sa_handler = on_stop;
    sigaction(SIGTERM, &stop, 0);
    sigaction(SIGINT, &stop, 0);
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &child, 0);
    for (;;) {
        pause();
    }
}
