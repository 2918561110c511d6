# Reference values for tests/test_stats.py, computed independently of labpipe.
#   Rscript tests/reference/reference.R > tests/reference/reference_values.txt
# R 4.2, lme4 1.1-31, lmerTest 3.1-3, afex 1.2-1, geepack 1.3-9, MASS 7.3-58.2.
suppressPackageStartupMessages({
  library(lmerTest); library(afex); library(geepack); library(MASS)
})
options(digits = 12, width = 200)
here <- "tests/reference"
bal <- read.csv(file.path(here, "lmm_balanced.csv"), stringsAsFactors = TRUE)
unb <- read.csv(file.path(here, "lmm_unbalanced.csv"), stringsAsFactors = TRUE)
rein <- read.csv(file.path(here, "reinstatement.csv"), stringsAsFactors = TRUE)

show_lmm <- function(label, formula, data) {
  for (coding in c("contr.sum", "contr.treatment")) {
    options(contrasts = c(coding, "contr.poly"))
    m <- lmer(formula, data = data, REML = FALSE)
    a <- anova(m, type = 3, ddf = "Satterthwaite")
    cat("\n== LMM", label, "coding", coding, " n_obs", nrow(data), " n_rats", nlevels(droplevels(data$subject)), "\n")
    cat("sigma", sigma(m), " theta", getME(m, "theta"), " logLik", as.numeric(logLik(m)), "\n")
    print(as.data.frame(a)[, c("NumDF", "DenDF", "F value", "Pr(>F)")])
  }
  options(contrasts = c("contr.treatment", "contr.poly"))
}
show_lmm("balanced group*sex*day", active ~ group * sex * day_in_phase + (1 | subject), bal)
show_lmm("balanced group*day", active ~ group * day_in_phase + (1 | subject), bal)
show_lmm("unbalanced group*sex*day", active ~ group * sex * day_in_phase + (1 | subject), unb)
show_lmm("unbalanced group*day", active ~ group * day_in_phase + (1 | subject), unb)

long <- rbind(
  data.frame(subject = rein$subject, group = rein$group, sex = rein$sex, period = 0, active = rein$baseline_active),
  data.frame(subject = rein$subject, group = rein$group, sex = rein$sex, period = 1, active = rein$test_active))
show_lmm("reinstatement group*period", active ~ group * period + (1 | subject), long)

# Mixed ANOVA, Greenhouse-Geisser (afex::aov_ez, partial eta squared).
aov_show <- function(label, data, between, within, dv = "active") {
  a <- suppressWarnings(suppressMessages(aov_ez(id = "subject", dv = dv, data = data, between = between,
                   within = within, anova_table = list(correction = "GG", es = "pes"))))
  cat("\n== mixed ANOVA", label, "\n")
  print(as.data.frame(a$anova_table))
  u <- summary(a)$pval.adjustments
  if (!is.null(u)) print(u)
}
bal$day <- factor(bal$day_in_phase); unb$day <- factor(unb$day_in_phase)
aov_show("balanced group x day", bal, "group", "day")
bal$cell <- interaction(bal$group, bal$sex, sep = " x ")
aov_show("balanced cell x day", bal, "cell", "day")
aov_show("unbalanced group x day (listwise)", unb, "group", "day")
long$periodf <- factor(long$period, labels = c("baseline", "test"))
aov_show("reinstatement group x period", long, "group", "periodf")

# Paired t per group, d_z = mean(diff)/sd(diff), Holm over the groups.
cat("\n== paired t (test vs baseline) per group\n")
ps <- c()
for (g in levels(rein$group)) {
  d <- rein[rein$group == g, ]
  tt <- t.test(d$test_active, d$baseline_active, paired = TRUE)
  diff <- d$test_active - d$baseline_active
  cat(g, "t", tt$statistic, "df", tt$parameter, "p", tt$p.value, "dz", mean(diff) / sd(diff), "\n")
  ps <- c(ps, tt$p.value)
}
cat("holm", p.adjust(ps, method = "holm"), "\n")

# Post hoc between groups on the per-animal mean of baseline and test (pingouin's marginal
# means), Student t (equal n), Holm over the three pairs; Hedges g by hand.
cat("\n== posthoc group pairs on per-animal means\n")
m <- (rein$baseline_active + rein$test_active) / 2
pairs <- list(c("A", "B"), c("A", "C"), c("B", "C"))
ps <- c()
for (pr in pairs) {
  x <- m[rein$group == pr[1]]; y <- m[rein$group == pr[2]]
  tt <- t.test(x, y, var.equal = TRUE)
  nx <- length(x); ny <- length(y)
  sp <- sqrt(((nx - 1) * var(x) + (ny - 1) * var(y)) / (nx + ny - 2))
  d <- (mean(x) - mean(y)) / sp
  g <- d * (1 - 3 / (4 * (nx + ny) - 9))
  cat(pr, "t", tt$statistic, "df", tt$parameter, "p", tt$p.value, "hedges", g, "\n")
  ps <- c(ps, tt$p.value)
}
cat("holm", p.adjust(ps, method = "holm"), "\n")

# Poisson GEE, exchangeable, robust SE (geepack), sum coding.
options(contrasts = c("contr.sum", "contr.poly"))
cat("\n== Poisson GEE exchangeable (geepack) balanced active ~ group * day_in_phase\n")
bal <- bal[order(bal$subject, bal$day_in_phase), ]
g <- geeglm(active ~ group * day_in_phase, id = subject, data = bal, family = poisson, corstr = "exchangeable")
print(cbind(coef = coef(g), se = sqrt(diag(vcov(g)))))
cat("alpha (exchangeable correlation)", unlist(g$geese$alpha), "\n")
print(anova(g))  # sequential Wald tests
V <- vcov(g); b <- coef(g)
wald <- function(idx) { bb <- b[idx]; as.numeric(t(bb) %*% solve(V[idx, idx]) %*% bb) }
cat("Wald chi2 term group", wald(2:3), " day", wald(4), " group:day", wald(5:6), "\n")

cat("\n== MASS::glm.nb theta (alpha = 1/theta), balanced active ~ group * day_in_phase\n")
nb <- glm.nb(active ~ group * day_in_phase, data = bal)
cat("theta", nb$theta, " alpha", 1 / nb$theta, "\n")
