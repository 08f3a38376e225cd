/*
** run_corpus.c - run a fuzz harness over files, without libFuzzer: the
** seed corpus and every crasher kept in fuzz/regressions/ run in
** `make test` with the normal compiler, and under the sanitizers.
**
**   run_corpus FILE_OR_DIR...
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf;
  long size;
  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    perror(path);
    exit(1);
  }
  buf = malloc((size_t)size + 1);
  if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
    perror(path);
    exit(1);
  }
  fclose(f);
  LLVMFuzzerTestOneInput(buf, (size_t)size);
  free(buf);
  return 1;
}

static long run_path(const char *path) {
  struct stat st;
  DIR *dir;
  struct dirent *entry;
  long n = 0;
  if (stat(path, &st) != 0) {
    perror(path);
    exit(1);
  }
  if (!S_ISDIR(st.st_mode))
    return run_file(path);
  dir = opendir(path);
  if (dir == NULL) {
    perror(path);
    exit(1);
  }
  while ((entry = readdir(dir)) != NULL) {
    char child[4096];
    if (entry->d_name[0] == '.')
      continue;
    snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
    n += run_path(child);
  }
  closedir(dir);
  return n;
}

int main(int argc, char **argv) {
  long n = 0;
  int i;
  for (i = 1; i < argc; i++)
    n += run_path(argv[i]);
  printf("%ld inputs ran clean\n", n);
  return 0;
}
